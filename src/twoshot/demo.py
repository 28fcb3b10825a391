"""``twoshot demo``: the whole two-shot method on generated videos, on one CPU, in minutes.

Generates a small DAVIS-layout dataset (:mod:`twoshot.data.synth`), runs the pipeline with
the ``tiny`` preset, or ``cutie-tiny`` with ``model="cutie"`` (static pretraining -> phase 1
-> pseudo-label bank -> phase 2, plus the naive 2-shot and full-supervision baselines), then
writes overlays of a few validation videos and a bar plot of J&F next to the report.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twoshot.config import Config, load_config
from twoshot.errors import UserError
from twoshot.model.spec import ModelSpec
from twoshot.report import PipelineReport


@dataclass(frozen=True)
class DemoScale:
    """Data size and training length of one demo flavour."""

    videos: int
    val_videos: int
    frames: int
    size: int
    static_images: int
    static_iterations: int
    iterations: int  # each main-schedule model (phase 1, phase 2, naive, full)
    end_warm: int
    phase2_start_update: int
    # Validation videos are segmented, and the bank made, at this multiple of the frame size:
    # at 96x96 every model scored 11-12 J&F higher at 192 than at 96 (docs/results.md).
    inference_scale: float = 2.0


# On the 2-core development machine, whose speed varies by a third from hour to hour, 500
# iterations per video stage took 10.8-11.5 min; with inference at 192, 400 took 9.7 min
# and 350 leave room for the slower hours (docs/results.md).
FULL = DemoScale(
    videos=40,
    val_videos=20,
    frames=24,
    size=96,
    static_images=200,
    static_iterations=250,
    iterations=350,
    end_warm=105,
    phase2_start_update=175,
)
QUICK = DemoScale(
    videos=8,
    val_videos=3,
    frames=12,
    size=64,
    static_images=32,
    static_iterations=40,
    iterations=60,
    end_warm=20,
    phase2_start_update=30,
)


# Cutie-tiny's training step (forward, point loss, backward) took 1.5-2.0x STCN-tiny's on the
# development machine (docs/performance.md): 200 iterations per video stage (350 for STCN) aim
# at STCN's 10 minutes. The whole Cutie demo took 7 min 37 s on the idle machine with 150
# static iterations. Pretraining decides whether Cutie-tiny learns to propagate: the phase-1
# model's bank scored 51.1 J&F after 300 static iterations and 57.1 after 500 (copying the
# nearest labeled mask: 43.4), for about 2 min more (docs/results.md, "Why Cutie-tiny learned
# no propagation"). At 500 what it learned hung on the rounding order: the static model scored
# 34.4 J&F with one intra-op thread and 24.4 with two; 1000 iterations lift both (51.8 and
# 44.6) and their banks to 17-23 J&F above copying (docs/results.md, "Robust to the rounding
# order"), for about 2 min more on the idle machine.
CUTIE_FULL = DemoScale(
    videos=40,
    val_videos=20,
    frames=24,
    size=96,
    static_images=200,
    static_iterations=1000,
    iterations=200,
    end_warm=60,
    phase2_start_update=100,
)

# SAM 2 (sam2-toy's twice-as-wide trunk at an input of 192 px, without the decoder's
# high-resolution skips, on static clips whose frames move: the spec's demo overrides): a
# static step of 4 clips takes about 0.6 s on 2 cores, a video step of 4 one-object clips
# about as long, and inference at 192 px about 30 s per evaluation, so the video stages are
# short; static pretraining runs 360 iterations (200 left a weaker tracker and bank). SAM 2
# resizes frames to its input itself, so inference runs at the frame size (docs/results.md).
SAM2_FULL = DemoScale(
    videos=40,
    val_videos=20,
    frames=24,
    size=96,
    static_images=200,
    static_iterations=360,
    iterations=30,
    end_warm=9,
    phase2_start_update=15,
    inference_scale=1.0,
)

# Models with a schedule of their own at full scale; the others run FULL.
_FULL_SCALES = {"cutie": CUTIE_FULL, "sam2": SAM2_FULL}


def demo_models() -> tuple[str, ...]:
    """The registered models that name a demo preset (``twoshot demo --model``)."""
    from twoshot.model.registry import specs

    return tuple(spec.kind for spec in specs() if spec.demo_preset is not None)


def _demo_spec(model: str) -> ModelSpec:
    """The spec of demo model ``model``; UserError listing the demo models if it has none."""
    from twoshot.model.registry import specs

    for spec in specs():
        if spec.kind == model and spec.demo_preset is not None:
            return spec
    raise UserError(f"--model {model!r}: the demo runs one of {', '.join(demo_models())}")


def demo_config(scale: DemoScale, data: Path, out: Path, device: str, model: str = "stcn") -> Config:
    """The tiny (``model="stcn"``) or cutie-tiny preset with the demo's schedule and the
    generated data's paths."""
    spec = _demo_spec(model)
    assert spec.demo_preset is not None
    its, steps = scale.iterations, [int(scale.iterations * 0.8)]
    # The spec's own overrides: STCN matches at 1/8, as at 96x96 its 1/16 leaves 6x6 cells, a
    # few per object; every model on the demo's data scored 6-12 J&F higher at 1/8
    # (docs/results.md). Cutie's decoder works at 1/16 only.
    config = load_config(
        spec.demo_preset,
        overrides=[
            *spec.demo_overrides,
            f"static.iterations={scale.static_iterations}",
            f"static.lr_steps=[{int(scale.static_iterations * 0.8)}]",
            f"static.crop_size={scale.size}",
            f"main.iterations={its}",
            f"main.lr_steps={steps}",
            f"main.crop_size={scale.size}",
            f"main.loss_start_warm={its // 5}",
            f"main.loss_end_warm={its // 2}",
            f"main.save_every={max(its // 3, 1)}",
            f"static.save_every={max(scale.static_iterations // 2, 1)}",
            f"twoshot.end_warm={scale.end_warm}",
            f"twoshot.phase2_start_update={scale.phase2_start_update}",
            f"inference.size={round(scale.size * scale.inference_scale)}",
        ],
    )
    config.pipeline.data = str(data)
    config.pipeline.dataset = "davis"
    config.pipeline.out = str(out)
    config.pipeline.static_data = str(data / "static")
    config.pipeline.device = device
    return config


def demo_data(scale: DemoScale, data: Path, seed: int = 0) -> bool:
    """Generate the demo's dataset at ``scale`` (1-3 objects a video) in ``data``, or reuse
    one made there with the same arguments. Returns True if it was generated."""
    from twoshot.data.synth import generate_or_reuse

    return generate_or_reuse(
        data,
        videos=scale.videos,
        frames=scale.frames,
        size=(scale.size, scale.size),
        objects=(1, 3),
        seed=seed,
        val_videos=scale.val_videos,
        static_images=scale.static_images,
    )


def run_demo(
    out: str | Path | None = None,
    quick: bool = False,
    seed: int = 0,
    device: str = "auto",
    log: Callable[[str], None] = print,
    progress: bool = True,
    scale: DemoScale | None = None,
    model: str = "stcn",
) -> tuple[PipelineReport, list[Path]]:
    """Generate data, run the pipeline, write overlays and a bar plot.

    out: demo folder (data in ``out/data``, the run in ``out/run``; default ``twoshot-demo``,
    or ``twoshot-demo-quick`` with ``quick``, each with ``-cutie`` appended for Cutie); quick:
    the 2-minute smoke flavour; seed: data seed; scale: explicit sizes (overrides ``quick``);
    model: ``stcn`` (the tiny preset) or ``cutie`` (cutie-tiny, with :data:`CUTIE_FULL`'s
    shorter schedule). A second call resumes / reuses what is complete; UserError if ``out``
    holds data or a run made with other settings.
    Returns (the pipeline report, the paths of the pictures written).
    """
    from twoshot.data.synth import is_synth_output

    _demo_spec(model)
    scale = scale or (QUICK if quick else _FULL_SCALES.get(model, FULL))
    suffix = "" if model == "stcn" else f"-{model}"
    out = Path(out or (("twoshot-demo-quick" if quick else "twoshot-demo") + suffix))
    data = out / "data"
    if not is_synth_output(data):
        log(
            f"[synth] generating {scale.videos}+{scale.val_videos} videos of {scale.frames} frames "
            f"at {scale.size}x{scale.size} in {data}"
        )
    demo_data(scale, data, seed)
    config = demo_config(scale, data, out / "run", device, model)
    from twoshot.pipeline import run_pipeline  # torch: not at import, which `twoshot --help` does

    report = run_pipeline(config, log=log, progress=progress)
    # The bank's own quality next to the baselines a user has without it (run/bank_value.md).
    from twoshot.inference.bank_quality import demo_bank_value

    log("[bank value] scoring the bank, nearest-mask copies and static forward propagation")
    demo_bank_value(out / "run", data, config.pipeline.train_split, config.inference)
    pictures = [bar_plot(report, out / "jf.png")]
    pictures += write_overlays(config, out / "overlays", count=3)
    return report, pictures


def bar_plot(report: PipelineReport, path: Path) -> Path:
    """A bar chart of J&F per model, with the share of labeled frames in each label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twoshot.fsutil import atomic_path

    # Titles wrapped to the bar's width: long ones ran into their neighbours.
    names = [f"{textwrap.fill(m.title, 20)}\n({100 * m.labeled_share:.0f}% labels)" for m in report.models]
    values = [100 * m.j_and_f for m in report.models]
    # Whiskers: one standard error over the validation objects, so that differences smaller
    # than the noise of this validation set look it.
    errors = [100 * (m.standard_error() or 0.0) for m in report.models]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(names)), 4.4))
    bars = ax.bar(
        range(len(values)),
        values,
        yerr=errors,
        capsize=4,
        ecolor="#555555",
        color=["#999999", "#d98c3f", "#4c72b0", "#2a9d8f", "#444444"][: len(values)],
    )
    for bar, value, error in zip(bars, values, errors):
        ax.annotate(
            f"{value:.1f}",
            (bar.get_x() + bar.get_width() / 2, value + error),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
        )
    ax.set_xticks(range(len(values)), names, fontsize=8)
    ax.set_ylabel(
        "J&F (validation; whiskers: ± 1 standard error over objects)" if any(errors) else "J&F (validation)",
        fontsize=9,
    )
    ax.set_ylim(0, max([v + e for v, e in zip(values, errors)] + [1.0]) * 1.15)
    ax.set_title("two-shot VOS on generated videos")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_overlays(config: Config, out: Path, count: int = 3) -> list[Path]:
    """Overlay videos (mp4) and a PNG strip of the two-shot model's predictions on a few
    validation videos. Returns the written paths."""
    from twoshot.data.masks import read_mask, write_frame
    from twoshot.data.readers import load_frames, open_dataset
    from twoshot.data.writers import overlay, write_overlay_video

    run = Path(config.pipeline.out)
    predictions = run / "predictions" / "phase2"
    paths: list[Path] = []
    for seq in open_dataset("davis", config.pipeline.data, config.pipeline.val_split)[:count]:
        frames = load_frames(seq)
        masks = np.stack([read_mask(predictions / seq.name / f"{name}.png")[0] for name in seq.frame_names])
        paths.append(write_overlay_video(out / f"{seq.name}.mp4", frames, masks, fps=8))
        picks = np.linspace(0, len(frames) - 1, 6).round().astype(int)
        strip = np.concatenate([overlay(frames[i], masks[i]) for i in picks], axis=1)
        write_frame(out / f"{seq.name}.png", strip)
        paths.append(out / f"{seq.name}.png")
    return paths
