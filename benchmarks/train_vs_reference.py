"""twoshot's training step against the two-shot paper's own, on the same weights and batches.

The paper's code (a checkout given with ``--seed-repo``: its ``model/model.py`` with
``STCNModel.do_pass``, ``BootstrappedCE`` and the EMA teacher) and twoshot's trainer
(:meth:`twoshot.train.trainer.Trainer.step`, the body of its loop, with ``SupervisedRegime``,
``Phase1Regime`` or ``Phase2Regime``) train the same STCN weights on the same batches, step by
step, in three scenarios:

- **supervised**: plain STCN training over iterations 19998.. (the bootstrapped CE switches
  from plain CE to the hardest-pixel mean at 20000);
- **phase1**: two-shot phase 1 with the EMA teacher and ``end_warm`` 1: iterations 0-1 warm
  up on labeled-only clips, from 2 on clips with unlabeled frames get the teacher's
  confident labels (0.9);
- **phase2**: two-shot phase 2 with online refinement (0.99) from iteration 1.

For each step it prints both losses and their relative difference, which batch each side
trained on (the paper's names: ``ori``, labeled-only clips; ``semi``, clips with unlabeled
frames, or phase 2's bank clips) and how many target pixels agree (frames 1-2, after
pseudo-labelling or refinement; with the share of them labeled and the share twoshot's regime
changed); after the last step the largest weight
difference of the student and of the teacher, next to the largest change the steps made.

The reference runs in its own process (``--run-reference``), where the stand-ins of
``vs_reference.py`` (CUDA-only calls, a missing torchvision, ImageNet downloads) and a
one-process stand-in for ``DistributedDataParallel`` are installed; nothing of the checkout
is vendored or edited. Its hyper-parameters are set the way its ``run_phase1.sh`` /
``run_phase2.sh`` do, AMP off. Weights are random (twoshot's STCN, seeded) with the
decoder's last convolution scaled by ``PRED_SCALE`` so that the teacher and the model are
confident on part of each frame, as trained weights are; the batches are generated clips
(two per batch: one with a target and a second object, one with a target only).

    python benchmarks/train_vs_reference.py --seed-repo ~/src/Two-shot-VOS
    python benchmarks/train_vs_reference.py --seed-repo ~/src/Two-shot-VOS --steps 4 --dtype float32

``--cutie PATH`` adds Cutie's training step against twoshot's Cutie recipe, from
``benchmarks/cutie_train_reference.py`` (``compare_cutie_training``), when that file is there.
``--sam2 PATH`` adds SAM 2's training step (``SAM2Train``, ``MultiStepMultiMasksAndIous``, its
optimiser) against twoshot's SAM 2 recipe, from ``benchmarks/sam2_train_reference.py``
(``compare_sam2_training``; the reference needs ``pip install hydra-core fvcore``).
``run(...) -> dict`` returns the figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SCENARIOS = ("supervised", "phase1", "phase2")
PRED_SCALE = 4.0  # random weights, sharpened decoder output (see the module docstring)
CLIPS, FRAMES = 2, 3
SEED = 14159265


@dataclass(frozen=True)
class Scenario:
    """One comparison: the first 0-based iteration, the reference's hyper-parameters that
    differ from plain training, and twoshot's two-shot settings."""

    name: str
    first_it: int
    para: dict[str, Any] = field(default_factory=dict)
    twoshot: dict[str, Any] = field(default_factory=dict)


SCENARIO_SETTINGS = {
    "supervised": Scenario("supervised", 19_998),
    "phase1": Scenario(
        "phase1",
        0,
        {"semi": True, "end_warm": 1, "use_teacher": True, "ema_alpha": 0.995, "semi_thres_upper": 0.9},
        {"end_warm": 1, "use_teacher": True, "ema_alpha": 0.995, "pseudo_threshold": 0.9},
    ),
    "phase2": Scenario(
        "phase2",
        0,
        {"phase2_train": 0, "phase2_start_update": 1, "phase2_thres": 0.99},
        {"phase2_start_update": 1, "refine_threshold": 0.99},
    ),
}


def reference_para(scenario: Scenario, steps: int) -> dict[str, Any]:
    """The paper's ``para`` for ``STCNModel``: its defaults (util/hyper_para.py, stage 3),
    AMP off, then the scenario's settings."""
    para: dict[str, Any] = {
        "single_object": False,
        "lr": 1e-5,
        "steps": [125_000],
        "gamma": 0.1,
        "amp": False,
        "debug": False,
        "semi": False,
        "semi_thres_upper": 0.9,
        "end_warm": 70_000,
        "use_teacher": False,
        "ema_alpha": 0.995,
        "phase2_train": -1,
        "phase2_start_update": 70_000,
        "phase2_thres": 0.99,
        "update_pseudo_bank": -1,
        "iterations": scenario.first_it + steps,
    }
    para.update(scenario.para)
    return para


# --- shared inputs ----------------------------------------------------------------------


def torch_dtype(name: str) -> Any:
    """torch.float64 or torch.float32 from its name."""
    import torch

    return {"float64": torch.float64, "float32": torch.float32}[name]


def make_weights(path: Path, dtype: str) -> None:
    """Random STCN weights (twoshot's initialisation, seeded) in ``dtype``, the decoder's
    output convolution scaled by PRED_SCALE; saved as a raw state dict."""
    import torch

    from twoshot.config import load_config
    from twoshot.model.registry import build_model

    torch.manual_seed(0)
    model = build_model(load_config(preset="stcn").model).to(torch_dtype(dtype))
    with torch.no_grad():
        model.decoder.pred.weight.mul_(PRED_SCALE)
        model.decoder.pred.bias.mul_(PRED_SCALE)
    torch.save(model.state_dict(), path)


def make_batches(steps: int, size: int, dtype: str) -> list[dict[str, Any]]:
    """Per step: ``labeled`` (every frame labeled, the warm-up's clips) and ``partial`` (frame
    1 of clip 0 and frames 1-2 of clip 1 unlabeled, -1 in ``cls_gt``); each a dict of rgb
    [B,T,3,S,S] (ImageNet-normalised), cls_gt int64 [B,T,S,S], labeled bool [B,T], selector
    [B,2] (clip 0: target and second object; clip 1: target only). ``truth``: cls_gt with
    every frame's labels (phase 2's bank)."""
    import numpy as np
    import torch

    from twoshot.data.fixtures import random_video
    from twoshot.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for step in range(steps):
        rgbs, labels = [], []
        for clip in range(CLIPS):
            ids = (1, 2) if clip == 0 else (1,)
            frames, masks = random_video(FRAMES, (size, size), object_ids=ids, seed=100 * step + clip)
            image = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).double() / 255
            rgbs.append((image - mean.double()) / std.double())
            labels.append(torch.from_numpy(masks.astype(np.int64)))
        # Contiguous, as both codes' data loaders give it: the permuted (channels-last) layout
        # makes twoshot's keys channels-last where the paper's code copies them to NCHW, and
        # the affinity then rounds differently on the two sides.
        rgb = torch.stack(rgbs).to(torch_dtype(dtype)).contiguous()
        truth = torch.stack(labels)
        selector = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch_dtype(dtype))
        partial = torch.tensor([[True, False, True], [True, False, False]])
        cut = truth.clone()
        cut[~partial] = -1
        everything = torch.ones(CLIPS, FRAMES, dtype=torch.bool)
        out.append(
            {
                "labeled": {"rgb": rgb, "cls_gt": truth, "labeled": everything, "selector": selector},
                "partial": {"rgb": rgb, "cls_gt": cut, "labeled": partial, "selector": selector},
                "truth": {"rgb": rgb, "cls_gt": truth, "labeled": partial, "selector": selector},
            }
        )
    return out


def scenario_inputs(scenario: str, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(warm-up batch, batch after the warm-up) of a step: phase 1 switches from labeled-only
    clips to partly labeled ones; phase 2 trains on the bank (every frame labeled)."""
    if scenario == "phase1":
        return batch["labeled"], batch["partial"]
    if scenario == "phase2":
        return batch["truth"], batch["truth"]
    return batch["labeled"], batch["labeled"]


# --- the reference's process --------------------------------------------------------------


def _one_process_ddp() -> None:
    """``DistributedDataParallel`` as a plain wrapper (``.module``, forward passed through):
    the paper's model wraps its networks in DDP, which needs a process group and a GPU."""
    import torch

    class OneProcess(torch.nn.Module):
        def __init__(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.module(*args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = OneProcess  # type: ignore[misc, assignment]


def reference_data(inputs: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """A batch as the paper's data loader gives it: rgb, gt / sec_gt [B,T,1,H,W], cls_gt,
    selector, gt_mask [B,T] (labeled frames) and the info its phase-2 branch reads."""
    cls_gt = inputs["cls_gt"]
    return {
        "rgb": inputs["rgb"],
        "gt": (cls_gt == 1).unsqueeze(2).to(dtype),
        "sec_gt": (cls_gt == 2).unsqueeze(2).to(dtype),
        "cls_gt": cls_gt.clone(),
        "selector": inputs["selector"],
        "gt_mask": inputs["labeled"].to(dtype),
        "info": {
            "vid_path": [f"clip{i}" for i in range(CLIPS)],
            "vid_pgt_path": [f"clip{i}" for i in range(CLIPS)],
            "target_object": [1] * CLIPS,
            "second_object": [2, 0],
            "frames": [[t] * CLIPS for t in range(FRAMES)],
        },
    }


def run_reference(seed_repo: Path, work: Path, scenario_name: str, steps: int, dtype_name: str) -> None:
    """In this process: the paper's ``STCNModel.do_pass`` over the scenario's steps; writes
    ``reference-<scenario>.pt`` (per-step losses, targets and batch used; final weights)."""
    from vs_reference import install_stand_ins

    install_stand_ins(seed_repo)
    _one_process_ddp()
    import torch

    dtype = torch_dtype(dtype_name)
    torch.set_default_dtype(dtype)
    from model.model import STCNModel  # the checkout's

    scenario = SCENARIO_SETTINGS[scenario_name]
    model = STCNModel(reference_para(scenario, steps))
    # Its logging and saving intervals would call a process group or write files.
    model.report_interval = model.save_im_interval = model.save_model_interval = 1 << 62
    model.STCN.module.load_state_dict(torch.load(work / "weights.pth", weights_only=True))
    batches = torch.load(work / "batches.pt", weights_only=True)
    record: dict[str, Any] = {"loss": [], "frames": [], "p": [], "targets": [], "used": []}
    compute = model.loss_computer.compute
    current: dict[str, Any] = {}

    def recording(data: dict[str, Any], it: int) -> Any:
        losses = compute(data, it)
        record["loss"].append(float(losses["total_loss"]))
        record["frames"].append([float(losses[f"loss_{i}"]) for i in range(1, FRAMES)])
        record["p"].append(float(losses["p"]))
        record["targets"].append(data["cls_gt"].detach().clone())
        record["used"].append("semi" if data["rgb"] is current["after"]["rgb"] else "ori")
        return losses

    model.loss_computer.compute = recording
    for step in range(steps):
        warm, after = scenario_inputs(scenario_name, batches[step])
        # Distinct tensors per dict: the paper's code edits cls_gt in place.
        current["after"] = reference_data(after, dtype)
        current["after"]["rgb"] = after["rgb"].clone()
        model.do_pass(reference_data(warm, dtype), current["after"], scenario.first_it + step)
    record["student"] = model.STCN.module.state_dict()
    if scenario.para.get("use_teacher"):
        record["teacher"] = model.t_STCN.module.state_dict()
    torch.save(record, work / f"reference-{scenario_name}.pt")


# --- twoshot ------------------------------------------------------------------------------


def run_twoshot(work: Path, scenario_name: str, steps: int, dtype_name: str) -> dict[str, Any]:
    """twoshot's Trainer.step over the same steps; the record :func:`run_reference` writes."""
    import torch

    from twoshot.config import TwoShotConfig, load_config
    from twoshot.data.batch import ClipBatch
    from twoshot.train.phases import Phase1Regime, Phase2Regime
    from twoshot.train.regimes import SupervisedRegime, TrainingRegime
    from twoshot.train.trainer import Trainer

    dtype = torch_dtype(dtype_name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    scenario = SCENARIO_SETTINGS[scenario_name]
    config = load_config(
        preset="stcn",
        overrides=[f"main.batch_size={CLIPS}", "main.num_workers=0", "main.amp=false", f"main.seed={SEED}"],
    )
    settings = TwoShotConfig(**scenario.twoshot)
    regime: TrainingRegime = SupervisedRegime()
    if scenario_name == "phase1":
        regime = Phase1Regime("labeled", "partial", settings)  # type: ignore[arg-type]
    elif scenario_name == "phase2":
        regime = Phase2Regime(settings)
    batches = torch.load(work / "batches.pt", weights_only=True)
    record: dict[str, Any] = {"loss": [], "frames": [], "p": [], "targets": [], "used": [], "changed": []}
    trainer = Trainer(
        config, "main", None, work / f"twoshot-{scenario_name}", init=work / "weights.pth",
        regime=regime, device="cpu", progress=False,
    )  # fmt: skip
    try:
        for step in range(steps):
            it = scenario.first_it + step
            warm, after = scenario_inputs(scenario_name, batches[step])
            chosen = regime.dataset(it)
            used = "semi" if chosen == "partial" or scenario_name == "phase2" else "ori"
            inputs = after if chosen == "partial" or scenario_name == "phase2" else warm
            cls_gt = inputs["cls_gt"]
            batch = ClipBatch(
                rgb=inputs["rgb"],
                first_masks=torch.stack([cls_gt[:, 0] == 1, cls_gt[:, 0] == 2], dim=1).to(dtype),
                cls_gt=cls_gt,
                selector=inputs["selector"],
                labeled=inputs["labeled"],
                names=tuple(f"clip{i}" for i in range(CLIPS)),
                frames=torch.arange(FRAMES).repeat(CLIPS, 1),
            )
            done = trainer.step(batch, it)
            record["loss"].append(done.loss_value)
            record["frames"].append([float(f) for f in done.loss.frames])
            record["p"].append(done.loss.p)
            record["targets"].append(done.batch.cls_gt.clone())
            record["changed"].append(float((done.batch.cls_gt != cls_gt)[:, 1:].double().mean()))
            record["used"].append(used)
        record["student"] = trainer.model.state_dict()
        teacher = getattr(regime, "teacher", None)
        if teacher is not None:
            record["teacher"] = teacher.state_dict()
    finally:
        trainer.close()
        torch.set_default_dtype(previous)
    return record


# --- comparison ---------------------------------------------------------------------------


def weight_difference(
    reference: dict[str, Any], ours: dict[str, Any], start: dict[str, Any]
) -> dict[str, Any]:
    """Largest |reference - twoshot| over all floating tensors (and which), next to the
    largest |twoshot - start| (what the steps changed) and their ratio."""
    worst, worst_name, change, missing = 0.0, "", 0.0, []
    for name, value in ours.items():
        if not value.is_floating_point():
            continue
        if name not in reference:
            missing.append(name)
            continue
        diff = float((reference[name].double() - value.double()).abs().max())
        if diff > worst:
            worst, worst_name = diff, name
        change = max(change, float((value.double() - start[name].double()).abs().max()))
    return {
        "max_abs_diff": worst,
        "worst_tensor": worst_name,
        "max_update": change,
        "diff_over_update": worst / change if change else None,
        "missing_in_reference": missing,
    }


def compare_scenario(
    reference: dict[str, Any], ours: dict[str, Any], start: dict[str, Any]
) -> dict[str, Any]:
    """Per-step losses, batches used and target agreement; final weight differences."""
    rows = []
    for step, (ref_loss, our_loss) in enumerate(zip(reference["loss"], ours["loss"])):
        ref_t, our_t = reference["targets"][step][:, 1:], ours["targets"][step][:, 1:]
        rows.append(
            {
                "loss_reference": ref_loss,
                "loss_twoshot": our_loss,
                "relative_diff": abs(ref_loss - our_loss) / max(abs(ref_loss), 1e-300),
                "p": [reference["p"][step], ours["p"][step]],
                "batch": [reference["used"][step], ours["used"][step]],
                "targets_agree": float((ref_t == our_t).double().mean()),
                "targets_labeled": float((our_t != -1).double().mean()),
                "targets_changed": ours["changed"][step] if "changed" in ours else None,
            }
        )
    result: dict[str, Any] = {
        "steps": rows,
        "student": weight_difference(reference["student"], ours["student"], start),
    }
    if "teacher" in reference or "teacher" in ours:
        if "teacher" in reference and "teacher" in ours:
            result["teacher"] = weight_difference(reference["teacher"], ours["teacher"], start)
        else:
            result["teacher"] = "only one side has a teacher"
    return result


def run(
    seed_repo: Path | None,
    cutie: Path | None = None,
    sam2: Path | None = None,
    *,
    steps: int = 4,
    dtype: str = "float64",
    size: int = 96,
    scenarios: Sequence[str] = SCENARIOS,
    work: Path | None = None,
    rounding_threads: int | None = None,
) -> dict[str, Any]:
    """Compare the scenarios (with ``seed_repo``), Cutie (with ``cutie``) and SAM 2 (with
    ``sam2``); the figures. ``rounding_threads``: also run the paper's steps again with that
    many intra-op threads and compare them with its first run (same code, another summation
    order)."""
    check_checkouts(seed_repo, cutie, sam2)
    from common import machine_info

    report: dict[str, Any] = {
        "machine": machine_info("cpu"),
        "settings": {"steps": steps, "dtype": dtype, "size": size, "clips": CLIPS, "pred_scale": PRED_SCALE},
    }
    if seed_repo is not None:
        import torch

        root = Path(work or tempfile.mkdtemp(prefix="train-vs-reference-"))
        root.mkdir(parents=True, exist_ok=True)
        make_weights(root / "weights.pth", dtype)
        torch.save(make_batches(steps, size, dtype), root / "batches.pt")
        start = torch.load(root / "weights.pth", weights_only=True)
        for name in scenarios:
            reference = _reference_record(seed_repo, root, name, steps, dtype, None)
            ours = run_twoshot(root, name, steps, dtype)
            report[name] = {
                "first_it": SCENARIO_SETTINGS[name].first_it,
                **compare_scenario(reference, ours, start),
            }
            if rounding_threads is not None:
                again = _reference_record(seed_repo, root, name, steps, dtype, rounding_threads)
                report[name]["rounding_control"] = {
                    "threads": rounding_threads,
                    **compare_scenario(reference, again, start),
                }
            print(format_scenario(name, report[name]), flush=True)
        if work is None:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    if cutie is not None:
        report["cutie"] = run_cutie(cutie, steps, dtype)
    if sam2 is not None:
        report["sam2"] = run_sam2(sam2, steps, dtype)
    return report


def _reference_record(
    seed_repo: Path, root: Path, name: str, steps: int, dtype: str, threads: int | None
) -> dict[str, Any]:
    """The paper's steps of scenario ``name`` in a process of its own (intra-op ``threads``;
    None: this process's environment); the record :func:`run_reference` writes."""
    import os

    import torch

    command = [sys.executable, str(HERE), "--run-reference", str(seed_repo), str(root), name]
    command += [str(steps), dtype]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-4000:]
        raise SystemExit(f"the paper's training step failed ({name}):\n{output}")
    path = root / f"reference-{name}.pt"
    record: dict[str, Any] = torch.load(path, weights_only=True)
    path.unlink()
    return record


def check_checkouts(seed_repo: Path | None, cutie: Path | None, sam2: Path | None = None) -> None:
    """SystemExit with a message when no checkout is given or one is not what it should be."""
    if seed_repo is None and cutie is None and sam2 is None:
        raise SystemExit(
            "give --seed-repo (the two-shot paper's code), --cutie (hkchengrex/Cutie) and/or "
            "--sam2 (facebookresearch/sam2)"
        )
    if sam2 is not None and not (sam2 / "training" / "loss_fns.py").is_file():
        raise SystemExit(f"--sam2 {sam2}: not a checkout of facebookresearch/sam2 (no training/loss_fns.py)")
    if seed_repo is not None and not (seed_repo / "model" / "model.py").is_file():
        raise SystemExit(
            f"--seed-repo {seed_repo}: not a checkout of the two-shot paper's code (no model/model.py)"
        )
    if cutie is not None and not (cutie / "cutie").is_dir():
        raise SystemExit(f"--cutie {cutie}: not a checkout of hkchengrex/Cutie (no cutie/ folder)")


def run_cutie(cutie: Path, steps: int, dtype: str) -> dict[str, Any]:
    """Cutie's comparison from ``cutie_train_reference.py`` next to this script, if present."""
    if not (HERE.parent / "cutie_train_reference.py").is_file():
        message = (
            "benchmarks/cutie_train_reference.py is not in this checkout: the Cutie training "
            "comparison is not available here (--cutie skipped)"
        )
        print(message)
        return {"skipped": message}
    module = importlib.import_module("cutie_train_reference")
    figures: dict[str, Any] = module.compare_cutie_training(str(cutie), steps, dtype)
    print("cutie:", json.dumps(figures, indent=2, default=str))
    return figures


def run_sam2(sam2: Path, steps: int, dtype: str) -> dict[str, Any]:
    """SAM 2's comparison (``sam2_train_reference.py``, toy sizes, 8-frame clips)."""
    module = importlib.import_module("sam2_train_reference")
    figures: dict[str, Any] = module.compare_sam2_training(str(sam2), steps, dtype)
    return figures


def format_scenario(name: str, figures: dict[str, Any]) -> str:
    """One scenario as a Markdown table of its steps, then its weight differences."""
    from common import markdown_table

    rows = []
    for step, row in enumerate(figures["steps"]):
        rows.append(
            [
                figures["first_it"] + step,
                " / ".join(row["batch"]),
                " / ".join(f"{p:.5f}" for p in row["p"]),
                f"{row['loss_reference']:.15g}",
                f"{row['loss_twoshot']:.15g}",
                f"{row['relative_diff']:.1e}",
                f"{100 * row['targets_agree']:.4f}% ({100 * row['targets_labeled']:.1f}% labeled"
                + (
                    f", {100 * row['targets_changed']:.1f}% changed)"
                    if row["targets_changed"] is not None
                    else ")"
                ),
            ]
        )
    header = [
        "it",
        "batch (paper / twoshot)",
        "p",
        "loss paper",
        "loss twoshot",
        "rel. diff",
        "targets agree",
    ]
    lines = [f"### {name}", "", markdown_table(header, rows), ""]
    for part in ("student", "teacher"):
        value = figures.get(part)
        if isinstance(value, dict):
            ratio = value["diff_over_update"]
            head = f"{part}: max |paper - twoshot| {value['max_abs_diff']:.1e}"
            if ratio is None:
                lines.append(f"{head}, no update")
            else:
                where = value["worst_tensor"] or "-"
                lines.append(f"{head} ({where}), max update {value['max_update']:.1e}, ratio {ratio:.1e}")
        elif value is not None:
            lines.append(f"{part}: {value}")
    control = figures.get("rounding_control")
    if control is not None:
        worst = max(row["relative_diff"] for row in control["steps"])
        lines.append(
            f"paper ({control['threads']} threads) against paper (this process's threads): "
            f"losses within {worst:.1e} relative"
        )
        for part in ("student", "teacher"):
            value = control.get(part)
            if isinstance(value, dict) and value["diff_over_update"] is not None:
                lines.append(
                    f"  {part}: max diff {value['max_abs_diff']:.1e} ({value['worst_tensor']}), "
                    f"ratio to the max update {value['diff_over_update']:.1e}"
                )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Command line; see the module docstring."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--run-reference"]:
        seed_repo, work, scenario, steps, dtype = args[1:6]
        run_reference(Path(seed_repo), Path(work), scenario, int(steps), dtype)
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed-repo", type=Path, help="checkout of the two-shot paper's code")
    parser.add_argument("--cutie", type=Path, help="checkout of hkchengrex/Cutie")
    parser.add_argument("--sam2", type=Path, help="checkout of facebookresearch/sam2 (its training/ folder)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per scenario (default 4)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--size", type=int, default=96, help="clip size in pixels, a multiple of 16 (96)")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="one scenario (repeatable)")
    parser.add_argument("--work", type=Path, help="keep the weights and batches here")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--rounding-control",
        type=int,
        metavar="THREADS",
        help="also run the paper's steps with THREADS intra-op threads and compare them with its "
        "first run: the size of a change of summation order within one code",
    )
    opts = parser.parse_args(args)
    if opts.steps < 1:
        parser.error("--steps must be >= 1")
    if opts.size < 32 or opts.size % 16:
        parser.error("--size must be a multiple of 16, at least 32")
    report = run(
        opts.seed_repo, opts.cutie, opts.sam2, steps=opts.steps, dtype=opts.dtype, size=opts.size,
        scenarios=opts.only or SCENARIOS, work=opts.work, rounding_threads=opts.rounding_control,
    )  # fmt: skip
    from common import print_report

    print_report("machine: " + json.dumps(report["machine"]), report, opts.json)


if __name__ == "__main__":
    main()
