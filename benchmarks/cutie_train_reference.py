"""Cutie's training step: twoshot's against the reference training code, step for step.

From a hkchengrex/Cutie checkout the user gives, builds the reference ``Trainer`` (its
``CutieTrainWrapper`` forward, ``LossComputer``, AdamW parameter groups, gradient-norm
clipping and step scheduler) and twoshot's :class:`~twoshot.train.trainer.Trainer` with the
Cutie recipe (``twoshot.train.objectives.CutieObjective``, ``twoshot.train.point_loss``), with
the same initial weights, and trains both on the same batches of generated clips with several
objects (``twoshot.data.fixtures.random_video``; some clips hold fewer objects than the
slots). twoshot's loop runs first and records, per step, its batch, the random-generator
states at the forward pass, its loss terms and its weights; the reference then replays each
step from those records. Printed: per-step losses side by side and the worst weight
differences after the last step (absolute, and relative to the largest weight change).

What is aligned, and how (inside this process only; twoshot's code is not changed):

- the reference's CUDA-only calls (``.cuda()``, DistributedDataParallel, process-group
  queries) are replaced by CPU stand-ins, and a missing torchvision is stubbed, as
  ``cutie_reference.py`` does;
- the reference draws its deep-update coin from NumPy and twoshot from torch: the reference's
  coin is drawn from torch's generator here, so both read the same memory frames;
- loss points: twoshot draws each sample's points from a generator seeded with the sample's
  seed; the reference's ``torch.rand`` in its point sampling draws from the same generator;
- ``--dtype float64``: the default dtype is float64 and ``Tensor.float()`` keeps float64 on
  both sides (both cast to float32 at the same places for mixed precision), and the
  reference's TorchScript CE and dice run as the Python functions they were compiled from,
  so that differences are those of the computation, not of rounding to float32;
- frames go to the reference in [0, 1] (it normalises inside its network), to twoshot
  normalised (the engine and datasets normalise).

    python benchmarks/cutie_train_reference.py --reference /path/to/Cutie             # ~1 min
    python benchmarks/cutie_train_reference.py --reference /path/to/Cutie --dtype float32

``compare_cutie_training(cutie_repo, steps, dtype) -> dict`` prints the table and returns the
figures (``benchmarks/train_vs_reference.py --cutie PATH`` calls it).

``--demo OUT`` instead trains cutie-tiny on the Cutie demo's data (``twoshot.demo.CUTIE_FULL``,
static pretraining then full supervision) with twoshot's Trainer and, after each of its steps,
the reference's ``do_pass`` on the same batch, both with the encoders' BatchNorm frozen as the
reference freezes it, then scores both sides' models as the demo does (validation J&F, bank
J&F against copying the nearest labeled mask); ``demo_comparison(cutie_repo, out) -> dict``:

    python benchmarks/cutie_train_reference.py --reference /path/to/Cutie --demo /tmp/ref-demo
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import types
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# A sibling script (benchmarks/ is first on sys.path when a script there runs, as for common.py).
from cutie_reference import import_reference, randomise
from twoshot.config import Config, apply_override, load_config
from twoshot.data.batch import ClipBatch
from twoshot.data.fixtures import random_video
from twoshot.model.cutie import Cutie
from twoshot.train.regimes import SupervisedRegime
from twoshot.train.trainer import Trainer

# In float64: the reference's own constants are made in the default dtype (float64 here).
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)


def reference_term(name: str) -> str:
    """The reference's name of twoshot's loss term ``name``."""
    if name in ("ce", "dice"):
        return f"loss_{name}"
    return f"aux_{name}"


class GeneratedClips(torch.utils.data.Dataset[ClipBatch]):
    """``count`` fixed clips of ``frames`` frames at ``size`` x ``size`` with ``slots`` object
    slots; clip i holds ``slots`` objects when i is even, one fewer when odd (so a batch's
    padding slot is exercised). Frames are ImageNet-normalised, in the default dtype."""

    def __init__(self, count: int, frames: int, size: int, slots: int, seed: int) -> None:
        self.items: list[ClipBatch] = []
        for i in range(count):
            present = slots if i % 2 == 0 else slots - 1
            video, labels = random_video(
                frames, (size, size), object_ids=tuple(range(1, present + 1)), seed=seed + i
            )
            dtype = torch.get_default_dtype()
            rgb = torch.from_numpy(video).permute(0, 3, 1, 2).to(dtype) / 255
            rgb = (rgb - MEAN.to(dtype)[:, None, None]) / STD.to(dtype)[:, None, None]
            cls_gt = torch.from_numpy(labels.astype(np.int64))
            first = torch.stack([(cls_gt[0] == k + 1).to(dtype) for k in range(slots)])
            selector = torch.tensor([1.0 if k < present else 0.0 for k in range(slots)], dtype=dtype)
            self.items.append(
                ClipBatch.single(
                    rgb=rgb,
                    first_masks=first,
                    cls_gt=cls_gt,
                    selector=selector,
                    labeled=torch.ones(frames, dtype=torch.bool),
                    name=f"clip{i}",
                    frames=list(range(frames)),
                )
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ClipBatch:
        return self.items[index]


@contextlib.contextmanager
def precision(dtype: torch.dtype) -> Iterator[None]:
    """Default dtype ``dtype``; with float64 ``Tensor.float()`` keeps float64 (see module doc)."""
    saved_dtype, saved_float = torch.get_default_dtype(), torch.Tensor.float
    torch.set_default_dtype(dtype)
    if dtype == torch.float64:
        torch.Tensor.float = lambda self, *args, **kwargs: self.to(torch.float64)  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.set_default_dtype(saved_dtype)
        torch.Tensor.float = saved_float  # type: ignore[method-assign]


def twoshot_config(model: str, steps: int, frames: int, size: int, slots: int, batch: int) -> Config:
    """The cutie-<model> preset with a short main schedule that crosses one lr step."""
    config = load_config(f"cutie-{model}")
    for item in (
        f"main.iterations={steps}",
        f"main.batch_size={batch}",
        "main.lr=1e-4",
        f"main.lr_steps=[{max(1, steps // 2)}]",
        "main.lr_gamma=0.1",
        "main.weight_decay=1e-3",
        "main.grad_clip=3.0",
        f"main.num_frames={frames}",
        f"main.crop_size={size}",
        f"main.num_objects={slots}",
        "main.num_workers=0",
        "main.freeze_bn=true",  # the reference freezes its encoders' BatchNorm
        "main.loss_top_p=1.0",
        f"main.save_every={steps}",
        f"main.log_every={steps}",
        f"main.image_every={10 * steps}",
        "main.cutie.num_points=512",
        "main.cutie.num_ref_frames=2",  # fewer than the clip's frames: random picks too
        "main.cutie.deep_update_prob=0.5",
    ):
        apply_override(config, item)
    return config


class Recorder(SupervisedRegime):
    """Supervised training that keeps a copy of the weights after every step."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def after_step(self, model: nn.Module, it: int) -> None:
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def run_twoshot(config: Config, dataset: GeneratedClips, init: Path, out: Path) -> dict[str, Any]:
    """twoshot's Trainer over ``dataset``: per step the batch, the generator states at the
    forward pass, the loss terms and the weights after the step."""
    recorder = Recorder()
    trainer = Trainer(config, "main", dataset, out, init=init, regime=recorder, device="cpu", progress=False)
    model = trainer.model
    states: list[tuple[torch.Tensor, Any]] = []
    batches: list[ClipBatch] = []
    losses: list[dict[str, float]] = []
    forward = model.training_forward
    objective_loss = trainer.objective.loss

    def recording_forward(*args: Any) -> Any:
        states.append((torch.get_rng_state(), np.random.get_state()))
        return forward(*args)

    def recording_loss(output: Any, batch: ClipBatch, it: int) -> Any:
        result = objective_loss(output, batch, it)
        batches.append(batch)
        losses.append(
            {"total": float(result.total.detach()), **{k: float(v) for k, v in result.terms.items()}}
        )
        return result

    model.training_forward = recording_forward  # type: ignore[method-assign]
    trainer.objective.loss = recording_loss  # type: ignore[method-assign]
    try:
        trainer.run()
    finally:
        trainer.close()
    return {"states": states, "batches": batches, "losses": losses, "weights": recorder.weights}


def reference_model_config(ref: dict[str, Any], path: Path, config: Config) -> Any:
    """The reference model config (base.yaml) with twoshot's sizes of ``config.model``."""
    conf = ref["OmegaConf"]
    model_cfg = conf.load(path / "cutie" / "config" / "model" / "base.yaml")
    m, sizes = config.model, config.model.cutie
    encoder = ResNetStandIn.channels(m.key_block, m.key_width)
    model_cfg.pixel_dim = sizes.pixel_dim
    model_cfg.key_dim = m.key_dim
    model_cfg.value_dim = m.value_dim
    model_cfg.sensory_dim = sizes.sensory_dim
    model_cfg.embed_dim = sizes.embed_dim
    model_cfg.pixel_encoder.ms_dims = encoder[::-1]
    model_cfg.mask_encoder.final_dim = ResNetStandIn.channels(m.value_block, m.value_width)[-1]
    ot = model_cfg.object_transformer
    ot.embed_dim, ot.ff_dim, ot.num_heads = sizes.embed_dim, sizes.ff_dim, sizes.num_heads
    ot.num_blocks, ot.num_queries = sizes.num_blocks, sizes.num_queries
    model_cfg.pixel_pe_scale, model_cfg.pixel_pe_temperature = sizes.pe_scale, sizes.pe_temperature
    model_cfg.mask_decoder.up_dims = list(m.decoder_dims)
    return model_cfg


class ResNetStandIn:
    """The reference's ResNet class built with twoshot's block counts and width (the reference
    builds only ResNet-18 / 50 at width 64); its own blocks, names and initialisation."""

    @staticmethod
    def channels(block: str, width: int) -> list[int]:
        """Output channels of layers 1..3 (strides 4, 8, 16)."""
        expansion = 4 if block == "bottleneck" else 1
        return [width * expansion, 2 * width * expansion, 4 * width * expansion]

    @staticmethod
    def build(resnet: Any, block: str, layers: Sequence[int], width: int, extra_dim: int) -> nn.Module:
        """A reference ResNet with ``layers`` blocks per stage at ``width`` (layer4 omitted)."""
        kind = resnet.Bottleneck if block == "bottleneck" else resnet.BasicBlock
        net = nn.Module()
        net.conv1 = nn.Conv2d(3 + extra_dim, width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(width)
        net.relu = nn.ReLU(inplace=True)
        net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        builder = types.SimpleNamespace(inplanes=width)
        make = resnet.ResNet._make_layer
        net.layer1 = make(builder, kind, width, layers[0])
        net.layer2 = make(builder, kind, 2 * width, layers[1], stride=2)
        net.layer3 = make(builder, kind, 4 * width, layers[2], stride=2)
        return net


def reference_stage_config(
    ref: dict[str, Any], path: Path, config: Config, section: str = "main"
) -> tuple[Any, Any]:
    """(cfg, stage_cfg): train_config.yaml's main training with twoshot's ``config.<section>``
    (``main`` or ``static``)."""
    conf = ref["OmegaConf"]
    train = conf.load(path / "cutie" / "config" / "train_config.yaml")
    stage = train.main_training
    main = getattr(config, section)
    cutie = main.cutie
    stage.batch_size = main.batch_size
    stage.amp = False
    stage.num_iterations = main.iterations
    stage.learning_rate = main.lr
    stage.lr_schedule = "step"
    stage.lr_schedule_steps = list(main.lr_steps)
    stage.lr_schedule_gamma = main.lr_gamma
    stage.train_num_points = cutie.num_points
    stage.oversample_ratio = cutie.oversample_ratio
    stage.importance_sample_ratio = cutie.importance_ratio
    stage.clip_grad_norm = main.grad_clip
    stage.weight_decay = main.weight_decay
    stage.embed_weight_decay = cutie.embed_weight_decay
    stage.backbone_lr_ratio = cutie.backbone_lr_ratio
    stage.num_ref_frames = cutie.num_ref_frames
    stage.seq_length = main.num_frames
    stage.num_objects = main.num_objects
    stage.deep_update_prob = cutie.deep_update_prob
    model_cfg = reference_model_config(ref, path, config)
    model_cfg.aux_loss.sensory.weight = cutie.sensory_aux_weight
    model_cfg.aux_loss.query.weight = cutie.query_aux_weight
    cfg = conf.create(
        {
            "exp_id": "twoshot-compare",
            "debug": False,
            "log_text_interval": 10**9,
            "log_image_interval": 10**9,
            "save_weights_interval": 10**9,
            "save_checkpoint_interval": 10**9,
            "model": model_cfg,
        }
    )
    return cfg, conf.create({k: stage[k] for k in stage if k not in ("max_skip_schedule",)})


class _SingleProcess(nn.Module):
    """DistributedDataParallel's stand-in: the model as ``.module``, forward passed through."""

    def __init__(self, module: nn.Module, **_: Any) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class _PointDraws:
    """The reference's point sampling draws ``torch.rand`` from the current sample's generator."""

    def __init__(self) -> None:
        self.generator: torch.Generator | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def rand(self, *shape: int, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.rand(*shape, device=device, generator=self.generator, **kwargs)


@contextlib.contextmanager
def cpu_reference(ref_modules: dict[str, Any]) -> Iterator[None]:
    """The reference Trainer's CUDA / process-group calls replaced for one CPU process."""
    saved = (
        torch.distributed.get_rank,
        torch.distributed.get_world_size,
        nn.parallel.DistributedDataParallel,
        nn.Module.cuda,
        torch.Tensor.cuda,
    )
    torch.distributed.get_rank = lambda *a, **k: 0  # type: ignore[assignment]
    torch.distributed.get_world_size = lambda *a, **k: 1  # type: ignore[assignment]
    nn.parallel.DistributedDataParallel = _SingleProcess  # type: ignore[misc,assignment]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        (
            torch.distributed.get_rank,
            torch.distributed.get_world_size,
            nn.parallel.DistributedDataParallel,
            nn.Module.cuda,
            torch.Tensor.cuda,
        ) = saved  # type: ignore[misc]


def import_training(path: Path, config: Config) -> dict[str, Any]:
    """The reference's training modules, with its ResNets built at twoshot's sizes."""
    ref = import_reference(path)
    from cutie.model import losses, train_wrapper, trainer
    from cutie.model.utils import resnet
    from cutie.utils import point_features

    m = config.model

    def stand_in(block: str, layers: Sequence[int], width: int) -> Any:
        def build(pretrained: bool = True, extra_dim: int = 0, model_dir: Any = None) -> nn.Module:
            return ResNetStandIn.build(resnet, block, layers, width, extra_dim)

        return build

    # The reference's own builders, kept from the first call (a second call re-patches).
    resnet18, resnet50 = resnet.__dict__.setdefault("_unpatched", (resnet.resnet18, resnet.resnet50))
    own = {("basic", (2, 2, 2), 64): resnet18, ("bottleneck", (3, 4, 6), 64): resnet50}
    pixel = own.get((m.key_block, tuple(m.key_layers), m.key_width)) or stand_in(
        m.key_block, m.key_layers, m.key_width
    )
    mask = own.get((m.value_block, tuple(m.value_layers), m.value_width)) or stand_in(
        m.value_block, m.value_layers, m.value_width
    )

    # PixelEncoder asks for its ResNet without extra input channels, MaskEncoder with them.
    def chosen(pretrained: bool = True, extra_dim: int = 0, model_dir: Any = None) -> nn.Module:
        return (mask if extra_dim else pixel)(pretrained, extra_dim, model_dir)

    resnet.resnet18 = resnet.resnet50 = chosen
    draws = _PointDraws()
    point_features.torch = draws
    # Its CE and dice are TorchScript functions, which a patched ``Tensor.float`` does not
    # reach (dice rounds its soft targets to float32): run their Python source instead.
    for name in ("ce_loss", "dice_loss"):
        original = getattr(getattr(losses, name), "_torchdynamo_inline", None)
        if original is not None:
            setattr(losses, name, original)
    # The deep-update coin from torch's generator, as twoshot draws it (see module doc).
    train_wrapper.np = types.SimpleNamespace(random=types.SimpleNamespace(rand=lambda: float(torch.rand(()))))
    return {**ref, "losses": losses, "trainer": trainer, "draws": draws}


def run_reference(
    ref: dict[str, Any], path: Path, config: Config, init: dict[str, torch.Tensor], record: dict[str, Any]
) -> dict[str, Any]:
    """Replay twoshot's recorded steps through the reference Trainer's ``do_pass``."""
    cfg, stage_cfg = reference_stage_config(ref, path, config)
    losses_module, draws = ref["losses"], ref["draws"]
    log = types.SimpleNamespace(log_string=lambda *a: None, info=lambda *a: None, time_estimator=None)
    with cpu_reference(ref):
        trainer = ref["trainer"].Trainer(cfg, stage_cfg, log, None)
        network = trainer.cutie.module
        network.load_state_dict(init, strict=True)
        compute = trainer.loss_computer.compute
        one_hot = losses_module.cls_to_one_hot
        seeds: list[int] = []
        results: list[dict[str, float]] = []
        weights: list[dict[str, torch.Tensor]] = []

        def next_sample_one_hot(cls_gt: torch.Tensor, num_objects: int) -> torch.Tensor:
            # compute() makes each sample's one-hot targets first: switch to its point draws.
            draws.generator = torch.Generator().manual_seed(seeds.pop(0))
            return one_hot(cls_gt, num_objects)

        def recording_compute(data: dict[str, Any], num_objects: list[int]) -> dict[str, Any]:
            out = compute(data, num_objects)
            results.append({k: float(v) for k, v in out.items()})
            return out

        losses_module.cls_to_one_hot = next_sample_one_hot
        trainer.loss_computer.compute = recording_compute
        try:
            for it, (batch, (torch_state, np_state)) in enumerate(zip(record["batches"], record["states"])):
                dtype = batch.rgb.dtype
                mean, std = MEAN.to(dtype)[:, None, None], STD.to(dtype)[:, None, None]
                data = {
                    "rgb": batch.rgb * std + mean,
                    "first_frame_gt": batch.first_masks[:, None],
                    "cls_gt": batch.cls_gt[:, :, None],
                    "selector": batch.selector,
                    "info": {"num_objects": batch.selector.sum(dim=1).long()},
                }
                assert batch.sample_seed is not None
                seeds[:] = [int(s) for s in batch.sample_seed]
                torch.set_rng_state(torch_state)
                np.random.set_state(np_state)
                trainer.do_pass(data, it)
                weights.append({k: v.detach().clone() for k, v in network.state_dict().items()})
        finally:
            losses_module.cls_to_one_hot = one_hot
    return {"losses": results, "weights": weights}


def weight_differences(
    ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> tuple[list[tuple[str, float]], float]:
    """([(name, max |ours - theirs|)] worst first, the largest change of any weight from
    ``start``): differences are judged against the size of the update."""
    rows, largest = [], 0.0
    for name, value in ours.items():
        if not value.is_floating_point():
            continue
        rows.append((name, float((value - theirs[name]).abs().max())))
        largest = max(largest, float((value - start[name].to(value.dtype)).abs().max()))
    return sorted(rows, key=lambda r: -r[1]), largest


def compare_cutie_training(
    cutie_repo: str,
    steps: int = 4,
    dtype: str = "float64",
    *,
    model: str = "small",
    frames: int = 5,
    size: int = 64,
    batch: int = 2,
    slots: int = 3,
    seed: int = 0,
    show: int = 5,
) -> dict[str, Any]:
    """Train twoshot's and the reference's Cutie ``steps`` steps on the same batches from the
    same weights; print per-step losses side by side and the worst weight differences.

    cutie_repo: a hkchengrex/Cutie checkout; dtype: ``float64`` or ``float32``; model: the
    ``cutie-<model>`` preset's sizes (``small`` is the reference's own; ``tiny`` builds the
    reference's ResNet blocks at twoshot's width). Returns {"steps": [{step, twoshot and
    reference loss terms, max relative loss difference}], "weights": worst rows, "max_loss_rel",
    "max_weight_abs", "largest_update", "max_weight_rel_update"}.
    """
    if dtype not in ("float64", "float32"):
        raise SystemExit(f"--dtype must be float64 or float32, got {dtype!r}")
    path = Path(cutie_repo).resolve()
    torch_dtype = getattr(torch, dtype)
    config = twoshot_config(model, steps, frames, size, slots, batch)
    ref = import_training(path, config)
    with precision(torch_dtype), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        start_model = Cutie(config.model).eval()
        randomise(start_model, seed)
        start = {k: v.detach().clone() for k, v in start_model.state_dict().items()}
        init = Path(tmp) / "init.pth"
        torch.save(start, init)
        dataset = GeneratedClips(4 * batch, frames, size, slots, seed)
        ours = run_twoshot(config, dataset, init, Path(tmp) / "run")
        theirs = run_reference(ref, path, config, start, ours)
    pairs = []
    for a, b in zip(ours["losses"], theirs["losses"]):
        terms = {"total": (a["total"], b["total_loss"])}
        terms.update({k: (v, b[reference_term(k)]) for k, v in a.items() if k != "total"})
        pairs.append(terms)
    result = {"model": model, "dtype": dtype}
    result.update(step_comparison(pairs, ours["weights"][-1], theirs["weights"][-1], start, show))
    print_comparison(result)
    return result


def step_comparison(
    losses: list[dict[str, tuple[float, float]]],
    ours: dict[str, torch.Tensor],
    theirs: dict[str, torch.Tensor],
    start: dict[str, torch.Tensor],
    show: int,
) -> dict[str, Any]:
    """Per-step loss terms {name: (twoshot, reference)} and both sides' final weights ->
    {"steps", "weights" (the ``show`` worst), "max_loss_rel", "max_weight_abs",
    "largest_update", "max_weight_rel_update"}: what a training comparison reports."""
    rows = []
    for it, terms in enumerate(losses):
        rel = max(abs(x - y) / max(abs(y), 1e-30) for x, y in terms.values())
        rows.append({"step": it + 1, "terms": terms, "max_rel": rel})
    diffs, largest = weight_differences(ours, theirs, start)
    worst = diffs[0][1] if diffs else 0.0
    return {
        "steps": rows,
        "weights": diffs[:show],
        "max_loss_rel": max((row["max_rel"] for row in rows), default=0.0),
        "max_weight_abs": worst,
        "largest_update": largest,
        "max_weight_rel_update": worst / largest if largest > 0 else 0.0,
    }


def print_comparison(result: dict[str, Any]) -> None:
    """The per-step loss table and the worst weight differences of :func:`compare_cutie_training`."""
    print(f"Cutie ({result['model']} sizes, {result['dtype']}): twoshot's training step vs the reference's")
    print(
        "| step | twoshot total | reference total | ce (twoshot / reference) | dice | worst term rel. diff |"
    )
    print("|---:|---:|---:|---|---|---:|")
    for row in result["steps"]:
        t = row["terms"]
        print(
            f"| {row['step']} | {t['total'][0]:.12f} | {t['total'][1]:.12f} "
            f"| {t['ce'][0]:.9f} / {t['ce'][1]:.9f} | {t['dice'][0]:.9f} / {t['dice'][1]:.9f} "
            f"| {row['max_rel']:.1e} |"
        )
    print(
        f"\nworst weight differences after the last step (largest change of any weight since the "
        f"start: {result['largest_update']:.2e}):"
    )
    print("| parameter | max abs diff | / largest change |")
    print("|---|---:|---:|")
    for name, diff in result["weights"]:
        print(f"| {name} | {diff:.2e} | {diff / max(result['largest_update'], 1e-300):.1e} |")


# --- the demo's training, both codes --------------------------------------------------------


def _reference_trainer(ref: dict[str, Any], path: Path, config: Config, section: str, weights: Any) -> Any:
    """A reference Trainer for twoshot's ``config.<section>`` holding ``weights``."""
    cfg, stage_cfg = reference_stage_config(ref, path, config, section)
    log = types.SimpleNamespace(log_string=lambda *a: None, info=lambda *a: None, time_estimator=None)
    trainer = ref["trainer"].Trainer(cfg, stage_cfg, log, None)
    trainer.cutie.module.load_state_dict(weights, strict=True)
    return trainer


def _reference_data(batch: ClipBatch) -> dict[str, Any]:
    """twoshot's batch as the reference's ``data`` dict (frames back in [0, 1])."""
    dtype = batch.rgb.dtype
    mean, std = MEAN.to(dtype)[:, None, None], STD.to(dtype)[:, None, None]
    return {
        "rgb": batch.rgb * std + mean,
        "first_frame_gt": batch.first_masks[:, None],
        "cls_gt": batch.cls_gt[:, :, None],
        "selector": batch.selector,
        "info": {"num_objects": batch.selector.sum(dim=1).long()},
    }


def train_side_by_side(
    ref: dict[str, Any],
    path: Path,
    config: Config,
    section: str,
    dataset: Any,
    init: tuple[Path, Path] | None,
    out: Path,
) -> tuple[Path, Path]:
    """One stage (``section``: ``static`` or ``main``) of twoshot's Trainer over ``dataset``;
    after each of its steps the reference's ``do_pass`` trains its own model on the same batch,
    from the same generator states (restored afterwards, so that twoshot's run is the one it
    would be alone). ``init``: (twoshot's, the reference's) starting weights; None: both start
    from the Trainer's seeded initialisation. Returns (twoshot's, the reference's) final
    weights: ``out/twoshot/final.pth``, ``out/reference.pth``."""
    import random

    from twoshot.fsutil import save_torch
    from twoshot.model.checkpoint import read_state_dict

    ours = init[0] if init else None
    trainer = Trainer(config, section, dataset, out / "twoshot", init=ours, device="cpu", progress=False)
    model = trainer.model
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = read_state_dict(init[1]) if init else own
    losses_module, draws = ref["losses"], ref["draws"]
    one_hot = losses_module.cls_to_one_hot
    seeds: list[int] = []
    states: list[Any] = []
    forward, objective_loss = model.training_forward, trainer.objective.loss

    def next_sample_one_hot(cls_gt: torch.Tensor, num_objects: int) -> torch.Tensor:
        draws.generator = torch.Generator().manual_seed(seeds.pop(0))
        return one_hot(cls_gt, num_objects)

    def recording_forward(*args: Any) -> Any:
        states[:] = [(torch.get_rng_state(), np.random.get_state(), random.getstate())]
        return forward(*args)

    with cpu_reference(ref):
        # Building the reference's network draws from the global generators, which twoshot's
        # run (seeded when its Trainer was built) reads for its memory picks and sensory coin.
        before = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        reference = _reference_trainer(ref, path, config, section, start)
        torch.set_rng_state(before[0])
        np.random.set_state(before[1])
        random.setstate(before[2])
        step = [0]

        def loss_then_reference_step(output: Any, batch: ClipBatch, it: int) -> Any:
            result = objective_loss(output, batch, it)
            now = (torch.get_rng_state(), np.random.get_state(), random.getstate())
            torch.set_rng_state(states[0][0])
            np.random.set_state(states[0][1])
            random.setstate(states[0][2])
            assert batch.sample_seed is not None
            seeds[:] = [int(seed) for seed in batch.sample_seed]
            with torch.enable_grad():
                reference.do_pass(_reference_data(batch), step[0])
            step[0] += 1
            torch.set_rng_state(now[0])
            np.random.set_state(now[1])
            random.setstate(now[2])
            return result

        losses_module.cls_to_one_hot = next_sample_one_hot
        model.training_forward = recording_forward  # type: ignore[method-assign]
        trainer.objective.loss = loss_then_reference_step  # type: ignore[method-assign]
        try:
            final = trainer.run()
        finally:
            trainer.close()
            losses_module.cls_to_one_hot = one_hot
    reference_weights = out / "reference.pth"
    save_torch(reference_weights, reference.cutie.module.state_dict())
    return final, reference_weights


@contextlib.contextmanager
def reference_batchnorm_trains() -> Iterator[None]:
    """The reference's encoders train their BatchNorm (its ``train()`` overrides, which freeze
    it, are set aside), as ``cutie-tiny`` does."""
    from cutie.model import big_modules

    saved = (big_modules.PixelEncoder.train, big_modules.MaskEncoder.train)
    big_modules.PixelEncoder.train = nn.Module.train  # type: ignore[method-assign]
    big_modules.MaskEncoder.train = nn.Module.train  # type: ignore[method-assign]
    try:
        yield
    finally:
        big_modules.PixelEncoder.train, big_modules.MaskEncoder.train = saved  # type: ignore[method-assign]


def demo_comparison(
    cutie_repo: str, out: Path, *, seed: int = 0, overrides: Sequence[str] = (), train_bn: bool = False
) -> dict[str, Any]:
    """Cutie-tiny on the Cutie demo's data (``twoshot.demo.CUTIE_FULL``: static pretraining,
    then full supervision), trained by twoshot and by the reference's training step from the
    same weights on the same batches, the encoders' BatchNorm frozen on both sides (the
    reference freezes it), or with ``train_bn`` training on both sides (``cutie-tiny``'s
    setting; the reference's freezing set aside); each model's J&F on the validation videos
    and its bank's against the training videos' ground truth (2 labeled frames per video, the
    demo's budget), next to copying the nearest labeled mask. ``overrides``: more config
    overrides (``KEY=VALUE``). Folders under ``out``; returns the scores."""
    from twoshot.demo import CUTIE_FULL as S
    from twoshot.demo import demo_config, demo_data

    data = out / "data"
    demo_data(S, data, seed)
    config = demo_config(S, data, out / "run", "cpu", "cutie")
    frozen = () if train_bn else ("static.freeze_bn=true", "main.freeze_bn=true")
    for item in (*frozen, *overrides):
        apply_override(config, item)
    path = Path(cutie_repo).resolve()
    ref = import_training(path, config)
    context = reference_batchnorm_trains() if train_bn else contextlib.nullcontext()
    with context:
        return _demo_scores(ref, path, config, out)


def _demo_scores(ref: dict[str, Any], path: Path, config: Config, out: Path) -> dict[str, Any]:
    """The two trainings of :func:`demo_comparison` and their scores."""
    import json

    from twoshot.inference.bank_quality import score_method
    from twoshot.inference.engine import PropagationEngine
    from twoshot.model import load_model
    from twoshot.pipeline import Pipeline
    from twoshot.train.recipes import full_recipe, static_recipe

    pipeline = Pipeline(config, log=lambda _: None, progress=False)
    _, budget = pipeline.budget()
    static_data = config.pipeline.static_data
    assert static_data is not None
    ours_static, theirs_static = train_side_by_side(
        ref, path, config, "static", static_recipe(config, static_data).dataset, None, out / "static"
    )
    dataset = full_recipe(config, pipeline.train_sequences, pipeline.layout).dataset
    ours_full, theirs_full = train_side_by_side(
        ref, path, config, "main", dataset, (ours_static, theirs_static), out / "full"
    )
    scores: dict[str, Any] = {"threads": torch.get_num_threads(), "freeze_bn": config.static.freeze_bn}
    copy = score_method("copy", pipeline.train_sequences, budget)
    scores["copy"] = 100 * copy.j_and_f
    for name, weights in (
        ("twoshot static", ours_static),
        ("reference static", theirs_static),
        ("twoshot full", ours_full),
        ("reference full", theirs_full),
    ):
        key = name.replace(" ", "-")
        val = pipeline.evaluate(key, pipeline.predict(key, weights))["J&F-Mean"]
        engine = PropagationEngine(load_model(weights, config.model), config.inference)
        bank = score_method("bank", pipeline.train_sequences, budget, engine).j_and_f
        scores[name] = {"val": 100 * val, "bank": 100 * bank}
        print(f"{name}: validation J&F {100 * val:.1f}, bank {100 * bank:.1f} (copy {scores['copy']:.1f})")
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    return scores


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", required=True, help="path to a hkchengrex/Cutie checkout")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    parser.add_argument("--frames", type=int, default=5, help="frames per training clip")
    parser.add_argument("--size", type=int, default=64, help="clip height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--demo",
        type=Path,
        metavar="OUT",
        help="instead: train cutie-tiny on the Cutie demo's data (in OUT) with both codes and "
        "score both (J&F, bank); --seed is the data's seed",
    )
    parser.add_argument(
        "--train-bn",
        action="store_true",
        help="with --demo: BatchNorm trains on both sides (cutie-tiny's setting) instead of frozen",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="with --demo: a config override"
    )
    args = parser.parse_args(argv)
    # The reference's CUDA autocast calls warn on every use; they are disabled here anyway.
    warnings.filterwarnings("ignore", message=".*torch.cuda.amp.autocast.*")
    if args.demo is not None:
        demo_comparison(args.reference, args.demo, seed=args.seed, overrides=args.set, train_bn=args.train_bn)
        return
    compare_cutie_training(
        args.reference,
        args.steps,
        args.dtype,
        model=args.model,
        frames=args.frames,
        size=args.size,
        batch=args.batch,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()
