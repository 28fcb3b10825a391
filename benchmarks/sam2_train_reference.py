"""SAM 2's training step: twoshot's against the reference training code, step for step.

From a facebookresearch/sam2 checkout the user gives, builds the reference's training model
(``training/model/sam2.py`` ``SAM2Train``), loss (``training/loss_fns.py``
``MultiStepMultiMasksAndIous``) and optimiser (``training/optimizer.py``
``construct_optimizer`` with ``layer_decay_param_modifier``, the CosineParamScheduler options
and ``GradientClipper``), all configured from its fine-tuning config
``sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml``, and twoshot's
:class:`~twoshot.train.trainer.Trainer` (the SAM 2 objective) with the same weights, and
trains both on the same batches.

- **twoshot's side** is its own ``Trainer.run`` (``SupervisedRegime``): per step it records the
  batch, the loss terms and the weights after the step.
- **The reference's side** replays each recorded batch through the reference trainer's step
  (``zero_grad``, ``model(batch)``, the loss's ``core_loss``, ``backward``, the schedulers at
  ``where`` = step / steps, gradient clipping, ``optimizer.step``). Its batch is a
  stand-in for ``BatchedVideoDatapoint`` with the fields the model reads (``flat_img_batch``,
  ``masks`` [T, O, S, S], ``flat_obj_to_img_idx``, ``num_frames``): every present object of
  every clip is one entry, as its collate function flattens them.
- Settings taken from the config unchanged: the model flags, the loss weights (focal 20,
  dice 1, IoU 1, class 1, ``supervise_all_iou``, L1 IoU), the optimiser's groups (layer decay
  0.9 on ``image_encoder.trunk`` with ``*pos_embed*`` at 1, no weight decay on ``*bias*`` and
  ``nn.LayerNorm``), gradient clipping at 0.1. Changed, and why: the prompt is the first
  frame's mask (``prob_to_use_pt_input_for_train`` 0, ``num_init_cond_frames_for_train`` 1:
  twoshot's semi-supervised recipe; the reference then draws no random number); dropout and
  drop path 0 (twoshot's SAM 2 has neither); the sizes (``--model toy`` or ``tiny``) and
  ``image_size`` (the clip's size); base lr 1e-4 and vision lr 6e-5 (the config's 5e-6 / 3e-6
  moved nothing visible in 4 steps on random weights), weight decay 0.1 as the config.
- ``--dtype float64`` (default): float64 default dtype and ``Tensor.float()`` keeps float64 on
  both sides (each casts at the same places); no AMP.

The reference needs ``hydra-core`` and ``fvcore`` (``pip install hydra-core fvcore``; its
``training.trainer`` and ``training.utils.data_utils`` modules, which pull in tensorboard and
tensordict, are replaced in this process by the two names the loss and model import from them).

    python benchmarks/sam2_train_reference.py --reference /path/to/sam2 [--model toy|tiny] [--steps 4]
    python benchmarks/sam2_train_reference.py --reference /path/to/sam2 --switches-off

``compare_sam2_training(reference, ...) -> dict`` returns the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import sys
import tempfile
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cutie_train_reference import GeneratedClips, Recorder, precision, step_comparison  # noqa: E402
from sam2_reference import OBJECT_SCORE_BIAS, _numbers, instantiate  # noqa: E402
from twoshot.config import Config, apply_override, load_config  # noqa: E402
from twoshot.data.batch import ClipBatch  # noqa: E402
from twoshot.model.sam2 import SIZES, Sam2, Sam2Size  # noqa: E402
from twoshot.train.trainer import Trainer  # noqa: E402

TRAINING_CONFIG = "sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"
PRESETS = {"toy": "sam2-toy", "tiny": "sam2.1-tiny"}
# The reference's Hiera cannot run a block that both pools and attends globally (its window
# size 0 is divided by the pooling stride), and every block of the toy's one-block stages after
# the first pools: the comparison's toy has a second stage-3 block, the global one.
REFERENCE_TOY = Sam2Size("toy", 16, 1, (1, 1, 2, 1), (3,), (8, 4, 4, 2), (7, 7), 128, 1)
TERMS = ("mask", "dice", "iou", "class")
BASE_LR, VISION_LR, WEIGHT_DECAY, GRAD_CLIP = 1e-4, 6e-5, 0.1, 0.1


@contextlib.contextmanager
def float64_everywhere(dtype: str) -> Iterator[None]:
    """:func:`precision` and, in float64, ``Tensor.to(torch.float32)`` and ``torch.ones(...,
    dtype=torch.float32)`` made in float64 too (the reference builds its random-Fourier
    position grid in float32, twoshot in the default dtype; both cast point coordinates)."""
    saved_to = torch.Tensor.to

    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return saved_to(self, *args, **kwargs)

    saved_ones = torch.ones

    def ones(*args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return saved_ones(*args, **kwargs)

    with precision(getattr(torch, dtype)):
        if dtype == "float64":
            torch.Tensor.to = to  # type: ignore[method-assign]
            torch.ones = ones  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.Tensor.to = saved_to  # type: ignore[method-assign]
            torch.ones = saved_ones


def import_reference(path: Path) -> dict[str, Any]:
    """The reference's training modules from a checkout at ``path`` (see the module doc)."""
    if not (path / "training" / "model" / "sam2.py").is_file():
        raise SystemExit(f"{path}: not a facebookresearch/sam2 checkout (no training/model/sam2.py)")
    try:
        importlib.import_module("hydra")
        importlib.import_module("fvcore.common.param_scheduler")
    except ImportError as exc:
        raise SystemExit(
            f"the reference's optimiser needs hydra-core and fvcore ({exc}): pip install hydra-core fvcore"
        ) from exc
    for name in [m for m in sys.modules if m.split(".")[0] in ("sam2", "training")]:
        del sys.modules[name]
    sys.path.insert(0, str(path))
    root = types.ModuleType("sam2")
    root.__path__ = [str(path / "sam2")]  # its __init__ (Hydra's config store) is skipped
    sys.modules["sam2"] = root
    trainer = types.ModuleType("training.trainer")
    trainer.CORE_LOSS_KEY = "core_loss"  # type: ignore[attr-defined]
    data_utils = types.ModuleType("training.utils.data_utils")
    data_utils.BatchedVideoDatapoint = object  # type: ignore[attr-defined]
    importlib.import_module("training")
    importlib.import_module("training.utils")
    sys.modules["training.trainer"] = trainer
    sys.modules["training.utils.data_utils"] = data_utils
    return {
        "model": importlib.import_module("training.model.sam2"),
        "loss": importlib.import_module("training.loss_fns"),
        "optimizer": importlib.import_module("training.optimizer"),
    }


def reference_model_config(
    path: Path, size: str, image_size: int, switches_off: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model node, trainer node) of the fine-tuning config with ``size``'s trunk and the
    changes listed in the module doc; switches_off: without high-res features and multimask
    (``--switches-off``)."""
    trainer = _numbers(yaml.safe_load((path / TRAINING_CONFIG).read_text()))["trainer"]
    model = copy.deepcopy(trainer["model"])
    s = SIZES[size]
    trunk = model["image_encoder"]["trunk"]
    trunk.update(
        embed_dim=s.embed_dim,
        num_heads=s.num_heads,
        stages=list(s.stages),
        global_att_blocks=list(s.global_att_blocks),
        window_spec=list(s.window_spec),
        window_pos_embed_bkg_spatial_size=list(s.pos_embed_size),
        drop_path_rate=0.0,
    )
    model["image_encoder"]["neck"]["backbone_channel_list"] = s.channel_list
    attention = model["memory_attention"]
    attention["num_layers"] = s.memory_layers
    attention["layer"]["dropout"] = 0.0
    attention["layer"]["self_attention"]["dropout"] = 0.0
    attention["layer"]["cross_attention"]["dropout"] = 0.0
    model["image_size"] = image_size
    model["prob_to_use_pt_input_for_train"] = 0.0
    model["num_init_cond_frames_for_train"] = 1
    model["num_frames_to_correct_for_train"] = 1
    if switches_off:
        model["use_high_res_features_in_sam"] = False
        model["multimask_output_in_sam"] = False
    return model, trainer


def build_reference(
    ref: dict[str, Any],
    path: Path,
    size: str,
    image_size: int,
    state: dict[str, torch.Tensor],
    switches_off: bool = False,
) -> Any:
    """(model, loss, optimizer, clipper) of the reference with weights ``state``."""
    from omegaconf import OmegaConf

    node, trainer = reference_model_config(path, size, image_size, switches_off)
    model = instantiate(node)
    model.load_state_dict(state, strict=True)
    model.train()
    loss = instantiate(trainer["loss"]["all"])
    optim = trainer["optim"]
    options = copy.deepcopy(optim["options"])
    base, vision = options["lr"]
    base["scheduler"].update(start_value=BASE_LR, end_value=BASE_LR / 10)
    vision["scheduler"].update(start_value=VISION_LR, end_value=VISION_LR / 10)
    options["weight_decay"][0]["scheduler"]["value"] = WEIGHT_DECAY
    optimizer = ref["optimizer"].construct_optimizer(
        model,
        OmegaConf.create(optim["optimizer"]),
        OmegaConf.create(options),
        OmegaConf.create(optim["param_group_modifiers"]),
    )
    clipper = ref["optimizer"].GradientClipper(
        **{k: v for k, v in optim["gradient_clip"].items() if k != "_target_"}
    )
    return model, loss, optimizer, clipper


SWITCHES_OFF = (
    "model.sam2.use_high_res_features_in_sam=false",
    "model.sam2.multimask_output_in_sam=false",
)


def twoshot_config(
    size: str, steps: int, frames: int, image_size: int, slots: int, batch: int, switches_off: bool = False
) -> Config:
    """The size's preset with a ``steps``-step main schedule and the reference's settings
    (switches_off: :data:`SWITCHES_OFF` as well)."""
    config = load_config(PRESETS[size], overrides=SWITCHES_OFF if switches_off else ())
    for item in (
        f"model.sam2.image_size={image_size}",
        f"main.iterations={steps}",
        f"main.batch_size={batch}",
        f"main.lr={BASE_LR}",
        f"main.sam2.image_encoder_lr_ratio={VISION_LR / BASE_LR}",
        "main.lr_steps=[]",
        f"main.weight_decay={WEIGHT_DECAY}",
        f"main.grad_clip={GRAD_CLIP}",
        f"main.num_frames={frames}",
        f"main.crop_size={image_size}",
        f"main.num_objects={slots}",
        "main.num_workers=0",
        "main.freeze_bn=true",
        f"main.save_every={steps}",
        f"main.log_every={steps}",
        f"main.image_every={10 * steps}",
    ):
        apply_override(config, item)
    return config


def run_twoshot(config: Config, dataset: GeneratedClips, init: Path, out: Path) -> dict[str, Any]:
    """twoshot's Trainer over ``dataset``: per step the batch, the loss terms and the weights."""
    recorder = Recorder()
    trainer = Trainer(config, "main", dataset, out, init=init, regime=recorder, device="cpu", progress=False)
    batches: list[ClipBatch] = []
    losses: list[dict[str, float]] = []
    objective_loss = trainer.objective.loss

    def recording_loss(output: Any, batch: ClipBatch, it: int) -> Any:
        result = objective_loss(output, batch, it)
        batches.append(batch)
        losses.append(
            {"total": float(result.total.detach()), **{k: float(v) for k, v in result.terms.items()}}
        )
        return result

    trainer.objective.loss = recording_loss  # type: ignore[method-assign]
    try:
        trainer.run()
    finally:
        trainer.close()
    return {"batches": batches, "losses": losses, "weights": recorder.weights}


def reference_batch(batch: ClipBatch) -> Any:
    """The reference's view of a twoshot batch: every present object of every clip."""
    b, t = batch.rgb.shape[:2]
    objects = [
        (i, k) for i in range(b) for k in range(batch.selector.size(1)) if bool(batch.selector[i, k] > 0.5)
    ]
    masks = torch.stack([torch.stack([batch.cls_gt[i, f] == k + 1 for i, k in objects]) for f in range(t)])
    index = torch.tensor([[i * t + f for i, _ in objects] for f in range(t)])
    return types.SimpleNamespace(
        flat_img_batch=batch.rgb.flatten(0, 1), masks=masks, flat_obj_to_img_idx=index, num_frames=t
    )


def run_reference(parts: tuple[Any, Any, Any, Any], batches: list[ClipBatch]) -> dict[str, Any]:
    """The reference trainer's step on each recorded batch (see the module doc)."""
    model, loss_fn, optimizer, clipper = parts
    losses, weights = [], []
    for step, batch in enumerate(batches):
        data = reference_batch(batch)
        optimizer.zero_grad(set_to_none=True)
        outputs = model(data)
        terms = loss_fn(outputs, data.masks)
        core = terms["core_loss"]
        core.backward()
        optimizer.step_schedulers(step / len(batches), step)
        clipper(model=model)
        optimizer.optimizer.step()
        losses.append(
            {"total": float(core.detach()), **{k: float(terms[f"loss_{k}"].detach()) for k in TERMS}}
        )
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return {"losses": losses, "weights": weights}


def compare_sam2_training(
    reference: str,
    steps: int = 4,
    dtype: str = "float64",
    *,
    model: str = "toy",
    frames: int = 8,
    image_size: int = 64,
    batch: int = 2,
    slots: int = 2,
    seed: int = 0,
    show: int = 5,
    switches_off: bool = False,
) -> dict[str, Any]:
    """Train twoshot's and the reference's SAM 2 ``steps`` steps on the same batches from the
    same weights; print the per-step losses side by side and the worst weight differences.
    Returns {"steps", "weights", "max_loss_rel", "max_weight_abs", "largest_update",
    "max_weight_rel_update", "seconds"}."""
    path = Path(reference).resolve()
    ref = import_reference(path)
    SIZES["toy"] = REFERENCE_TOY  # this process only (see REFERENCE_TOY)
    config = twoshot_config(model, steps, frames, image_size, slots, batch, switches_off)
    started = time.perf_counter()
    with float64_everywhere(dtype), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        start_model = Sam2(config.model).eval()
        with torch.no_grad():
            start_model.state_dict()[OBJECT_SCORE_BIAS].add_(2.0)  # objects seen: masks not all -1024
        start = {k: v.detach().clone() for k, v in start_model.state_dict().items()}
        init = Path(tmp) / "init.pth"
        torch.save(start, init)
        dataset = GeneratedClips(batch * steps, frames, image_size, slots, seed)
        ours = run_twoshot(config, dataset, init, Path(tmp) / "run")
        parts = build_reference(ref, path, model, image_size, start, switches_off)
        theirs = run_reference(parts, ours["batches"])
    pairs = [{k: (a[k], b[k]) for k in ("total", *TERMS)} for a, b in zip(ours["losses"], theirs["losses"])]
    result = {"model": model, "dtype": dtype}
    result.update(step_comparison(pairs, ours["weights"][-1], theirs["weights"][-1], start, show))
    result["seconds"] = time.perf_counter() - started
    print_comparison(result)
    return result


def print_comparison(result: dict[str, Any]) -> None:
    """The per-step loss table and the worst weight differences."""
    print(f"SAM 2 ({result['model']} sizes, {result['dtype']}): twoshot's training step vs the reference's")
    print(
        "| step | twoshot total | reference total | focal (twoshot / reference) | dice | iou | class "
        "| worst rel. diff |"
    )
    print("|---:|---:|---:|---|---|---|---|---:|")
    for row in result["steps"]:
        t = row["terms"]
        cells = " | ".join(f"{t[k][0]:.9f} / {t[k][1]:.9f}" for k in TERMS)
        print(
            f"| {row['step']} | {t['total'][0]:.12f} | {t['total'][1]:.12f} | {cells} "
            f"| {row['max_rel']:.1e} |"
        )
    print(
        "\nworst weight differences after the last step (largest change of any weight: "
        f"{result['largest_update']:.2e}):"
    )
    print("| parameter | max abs diff | / largest change |")
    print("|---|---:|---:|")
    for name, diff in result["weights"]:
        print(f"| {name} | {diff:.2e} | {diff / max(result['largest_update'], 1e-300):.1e} |")
    print(f"\n{result['seconds']:.0f} s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="facebookresearch/sam2 checkout")
    parser.add_argument("--model", choices=tuple(PRESETS), default="toy")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument(
        "--switches-off", action="store_true", help="both sides without high-res features and multimask"
    )
    opts = parser.parse_args(argv)
    compare_sam2_training(
        str(opts.reference),
        opts.steps,
        opts.dtype,
        model=opts.model,
        frames=opts.frames,
        image_size=opts.image_size,
        batch=opts.batch,
        slots=opts.slots,
        switches_off=opts.switches_off,
    )


if __name__ == "__main__":
    main()
