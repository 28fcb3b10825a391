"""Typed configuration: one dataclass per stage, YAML presets shipped in the package, and
``section.key=value`` overrides from the command line.

A preset file (``configs/<name>.yaml``) has one mapping per section of :class:`Config`. Values
not given keep the dataclass default. Overrides are parsed with YAML's scalar rules
(``1e-5`` is a float, ``true`` a bool, ``[1, 2]`` a list) and checked against the field's
type; an unknown key or a value of the wrong type raises :class:`UserError` naming the key and
the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from twoshot.config_values import check_type
from twoshot.errors import UserError


def _plugin_getattr(self: Any, name: str) -> Any:
    # ``__getattr__`` of the sections with model-plugin sections (ModelConfig, TrainConfig):
    # only called for names the dataclass lacks, so ``config.model.cutie`` reads a plugin section.
    if name.startswith("__"):
        raise AttributeError(name)
    sections = plugin_sections(self)
    if name in sections:
        return sections[name]
    raise AttributeError(f"{type(self).__name__!r} has no attribute or model section {name!r}")


def _plugin_eq(self: Any, other: object) -> bool:
    # ``__eq__`` of the same sections: their fields and their model-plugin sections.
    return type(other) is type(self) and to_dict(self) == to_dict(other)


@dataclass
class ModelConfig:
    """Network architecture and sizes. The defaults are the published STCN (``stcn`` preset).

    ``kind`` picks the architecture (a registered model, :func:`twoshot.model.registry.model_kinds`);
    the encoder fields serve both STCN and Cutie (STCN's key / value encoders are Cutie's pixel
    / mask encoders). A model's own sizes are the section ``model.<kind>`` (its spec's ``sizes``
    dataclass, :func:`plugin_sections`).
    """

    kind: str = "stcn"  # a registered model: stcn | cutie | ...
    key_block: str = "bottleneck"  # ResNet block of the key encoder: bottleneck | basic
    key_layers: list[int] = field(default_factory=lambda: [3, 4, 6])
    key_width: int = 64  # channels of the ResNet stem
    value_block: str = "basic"
    value_layers: list[int] = field(default_factory=lambda: [2, 2, 2])
    value_width: int = 64
    key_dim: int = 64  # key projection channels
    value_dim: int = 512  # memory value / key_comp channels
    decoder_dims: list[int] = field(default_factory=lambda: [512, 256, 256])
    # 16 is STCN. 8 keeps layer3 at 1/8 (stride 1): four times the matching positions, for
    # small frames, where 1/16 leaves a few cells per object (the demo's 96x96 frames).
    output_stride: int = 16
    backbone_weights: str | None = None  # torchvision ResNet-50/-18 .pth files (file, dir, or "a,b")

    if not TYPE_CHECKING:  # hidden from type checking, which keeps refusing unknown attributes
        __getattr__ = _plugin_getattr
        __eq__ = _plugin_eq


@dataclass
class TrainConfig:
    """One training stage (static pretraining, main training, two-shot phase 1 or 2).

    A model's own training settings are the section ``<stage>.<kind>`` (its spec's
    ``train_settings`` dataclass, :func:`plugin_sections`)."""

    iterations: int = 150_000
    batch_size: int = 4  # per process; the global batch is this x world size
    lr: float = 1e-5
    weight_decay: float = 1e-7
    lr_steps: list[int] = field(default_factory=lambda: [125_000])
    lr_gamma: float = 0.1
    amp: bool = True  # used on CUDA only; CPU trains in fp32
    grad_clip: float | None = None
    freeze_bn: bool = True  # STCN: BatchNorm frozen (eval mode); false trains it (models from scratch)
    seed: int = 14159265
    crop_size: int = 384
    # Static pretraining only: each frame shifted by up to this fraction of the crop (whole
    # pixels, per axis), so the object moves as in a video; 0 is STCN's augmentation.
    translate: float = 0.0
    num_frames: int = 3
    # Objects per training clip (K): up to this many of frame 0's objects are drawn into each
    # clip, fewer slots padded. STCN: 2 (a target and a second object); the Cutie presets: 3 in
    # main training and 1 in pre-training, as the reference's num_objects.
    num_objects: int = 2
    num_workers: int = 4
    max_skip_values: list[int] = field(default_factory=lambda: [5, 10, 15, 20, 25, 5])
    max_skip_fractions: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.9])
    loss_start_warm: int = 20_000  # bootstrapped CE: plain CE before this iteration
    loss_end_warm: int = 70_000  # top-p reaches its final value here
    loss_top_p: float = 0.15
    save_every: int = 10_000
    log_every: int = 100
    image_every: int = 1_000

    if not TYPE_CHECKING:
        __getattr__ = _plugin_getattr
        __eq__ = _plugin_eq


@dataclass
class TwoShotConfig:
    """The two-shot method's own settings (DESIGN §2)."""

    end_warm: int = 70_000  # phase 1: warm-up on labeled frames for iterations 0..end_warm
    ema_alpha: float = 0.995
    # The EMA teacher also averages the student's BatchNorm running statistics (true), or
    # keeps its own from the start of phase 1 (false, the paper: parameters only).
    ema_buffers: bool = False
    pseudo_threshold: float = 0.9  # phase 1 teacher confidence for a pseudo label
    use_teacher: bool = True  # false: the student labels its own clips
    # Phase 1 after end_warm: share of clips that stay labeled-only (ground truth on every
    # frame) instead of starting at a labeled frame and running over unlabeled ones. The
    # reference uses 0; a weak teacher (a small model trained briefly) needs some ground
    # truth beside its pseudo labels (docs/results.md).
    labeled_clip_share: float = 0.0
    phase2_start_update: int = 70_000  # phase 2: online refinement from this iteration
    refine_threshold: float = 0.99
    # Phase 2: also write the refined labels of unlabeled frames back into the pseudo-label
    # bank (DESIGN §2, off in the reference). The bank then changes during training, so a
    # resumed phase 2 is no longer bit-identical to an uninterrupted one.
    write_back: bool = False
    # Self-training rounds (``twoshot pipeline`` only): 1 is the paper (one bank, one phase
    # 2); each further round rebuilds the bank with the previous round's phase-2 model and
    # trains phase 2 again on it (docs/training.md, "Self-training rounds").
    rounds: int = 1
    # ``twoshot pipeline`` only: a trained teacher's weights (any registered model, told from
    # the checkpoint's keys). Phase 1 is skipped: the bank is made with this teacher, under its
    # own inference settings, and phase 2 trains the configured model on it (docs/training.md).
    teacher: str | None = None


@dataclass
class InferenceConfig:
    """Propagation settings (STCN's evaluation defaults)."""

    mem_every: int = 5
    top_k: int = 20
    size: int = 480  # shorter side for processing; -1 keeps native size
    include_last: bool = False  # temporary memory of the previous frame
    amp: bool = False  # autocast: CUDA, or a CPU with amp_dtype bfloat16 (docs/performance.md)
    amp_dtype: str = "float16"  # float16 | bfloat16: the autocast type with amp
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_memory_frames: int | None = None  # bounded memory for long videos; None = unbounded
    # Keep cached frame features and memories in CPU memory, moved to the device when read
    # (SAM 2 only, whose spec allows it: long videos on a small accelerator; a no-op on a CPU).
    offload: bool = False
    # Frames per key-encoder call (features are cached per video). None: 8 on CUDA, 1 on a
    # CPU, where one frame per call measured 1.08-1.14x faster and matches STCN bit for bit.
    key_batch: int | None = None
    # Bit-identical to the reference implementations (STCN's and Cutie's inference code).
    # Off by default: then the engine uses channels-last convolutions and the model's fast
    # inference copy (folded BatchNorm, shared per-frame work; docs/performance.md), whose
    # masks agree with the exact path's on all but a few pixels in a million; Cutie's fast
    # path is its exact one (its masked attention turns rounding into drift).
    exact: bool = False
    channels_last: bool | None = None  # NHWC convolutions; None: on unless ``exact``
    compile: bool = False  # torch.compile the network; falls back to eager where unavailable
    # Which runtime runs the networks: "torch", "onnxruntime" or "openvino" (STCN, Cutie and
    # SAM 2, CPU, fp32, the optional onnx / openvino extras; twoshot.inference.onnx_runtime,
    # docs/inference.md).
    runtime: str = "torch"
    # Where the runtimes keep the ONNX graphs they export, so that later processes skip the
    # export: None = $TWOSHOT_CACHE/onnx, else $XDG_CACHE_HOME/twoshot/onnx, else
    # ~/.cache/twoshot/onnx; "none" = no cache (twoshot.inference.onnx_cache).
    onnx_cache: str | None = None
    # A folder `twoshot export --format onnx` wrote: the runtime runs those graphs instead of
    # exporting (the same weights and input shapes, checked; twoshot.inference.onnx_cache).
    onnx_graphs: str | None = None
    # How bidirectional propagation (the bank, infer --backward) merges directions: "nearest"
    # (the paper's rule: each frame from its nearest labeled frame) or "fused" (a frame between
    # two labeled frames averages both sides, weighted by temporal distance; docs/inference.md).
    merge: str = "nearest"
    # Test-time augmentation, averaged in probability space: also the mirrored video, and
    # ``size`` times each factor of ``scales`` (1.0 = the plain run).
    flip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])

    def uses_channels_last(self) -> bool:
        """Whether convolutions run channels-last: ``channels_last``, or when that is unset,
        unless ``exact``."""
        return (not self.exact) if self.channels_last is None else self.channels_last


@dataclass
class PipelineConfig:
    """What ``twoshot pipeline`` runs: data, label budget, stages and baselines."""

    data: str = ""  # dataset root (DAVIS 2017, YouTube-VOS or generic layout)
    dataset: str | None = None  # davis | youtube | generic; None = detect
    train_split: str = "train"
    val_split: str = "val"
    out: str = "twoshot-run"
    budget: str | None = None  # label-budget JSON; None = make one from shots/strategy/seed
    shots: int = 2
    budget_strategy: str = "random"
    budget_seed: int = 0
    static_data: str | None = None  # image/mask pairs for static pretraining; None = skip
    init: str | None = None  # weights every training stage starts from (instead of static)
    baselines: list[str] = field(default_factory=lambda: ["naive", "full"])
    device: str = "auto"
    eval_workers: int = 1


@dataclass
class Config:
    """Everything a run needs; each section is one stage's configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    static: TrainConfig = field(default_factory=TrainConfig)
    main: TrainConfig = field(default_factory=TrainConfig)
    twoshot: TwoShotConfig = field(default_factory=TwoShotConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


# The model-plugin sections: which spec attribute holds each section class's dataclass.
_PLUGIN_ATTRIBUTES: dict[type, str] = {ModelConfig: "sizes", TrainConfig: "train_settings"}


def plugin_sections(section: Any) -> dict[str, Any]:
    """The registered models' own sections of a ModelConfig (``model.<kind>``) or a TrainConfig
    (``<stage>.<kind>``), kind -> dataclass instance; those not set yet start at their
    defaults. Empty for any other object."""
    attribute = _PLUGIN_ATTRIBUTES.get(type(section))
    if attribute is None:
        return {}
    from twoshot.model.registry import specs

    store: dict[str, Any] = section.__dict__.setdefault("_plugin_sections", {})
    found = {}
    for spec in specs():
        cls = getattr(spec, attribute)
        if cls is None:
            continue
        if spec.kind not in store:
            store[spec.kind] = cls()
        found[spec.kind] = store[spec.kind]
    return found


def _section_names(target: Any) -> list[str]:
    """The keys of a config section: its fields, then its model-plugin sections."""
    return [f.name for f in dataclasses.fields(target)] + list(plugin_sections(target))


def preset_names() -> tuple[str, ...]:
    """Every registered model's presets (the names ``--preset`` takes)."""
    from twoshot.model.registry import preset_names as registered

    return registered()


def preset_path(name: str) -> Path:
    """Path of the preset YAML ``name``; UserError listing the presets if unknown."""
    from twoshot.model.registry import preset_spec

    spec = preset_spec(name)
    if spec is None:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return spec.preset_file(name)


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    default_preset: str = "stcn",
) -> Config:
    """Build a Config: dataclass defaults <- preset <- YAML ``file`` <- ``key=value`` overrides.

    The preset is ``preset`` if given, else the YAML file's top-level ``preset:`` key, else
    ``default_preset``.
    """
    layers: list[tuple[dict[str, Any], str]] = []
    if file is not None:
        file_data = _read_yaml(Path(file))
        file_preset = file_data.pop("preset", None)
        preset = preset or file_preset
        layers.append((file_data, str(file)))
    return _layered(preset or default_preset, layers, overrides)


def config_from_dict(data: dict[str, Any], source: str) -> Config:
    """A Config from a mapping of sections, e.g. a saved run configuration: dataclass defaults
    <- its ``preset`` (default ``stcn``) <- ``data``. UserError naming ``source`` on a bad key."""
    data = dict(data)
    preset = data.pop("preset", None) or "stcn"
    return _layered(preset, [(data, source)], ())


def _layered(
    preset: str, layers: list[tuple[dict[str, Any], str]], overrides: list[str] | tuple[str, ...]
) -> Config:
    """Defaults <- ``preset`` <- each (mapping, source) of ``layers`` <- ``overrides``, checked."""
    config = Config()
    _merge(config, _read_yaml(preset_path(preset)), str(preset_path(preset)))
    for data, source in layers:
        _merge(config, data, source)
    for item in overrides:
        apply_override(config, item)
    from twoshot.config_checks import check_config

    check_config(config)
    return config


def apply_override(config: Any, item: str) -> None:
    """Apply one ``section.key=value`` override to ``config`` in place."""
    if "=" not in item:
        raise UserError(f"override {item!r} is not of the form key=value (e.g. main.lr=1e-4)")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    target = config
    for depth, part in enumerate(parts):
        names = _section_names(target)
        if part not in names:
            where = ".".join(parts[:depth]) or "top level"
            raise UserError(
                f"unknown config key {dotted!r}: {part!r} is not in {where}; valid keys: {', '.join(names)}"
            )
        if depth == len(parts) - 1:
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as exc:
                raise UserError(f"config key {dotted!r}: cannot parse value {raw!r}") from exc
            setattr(target, part, check_type(target, part, value, dotted))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise UserError(f"config key {dotted!r}: {part!r} is a value, not a section")


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass, model-plugin sections included (for saving next
    to checkpoints and reports)."""
    out: dict[str, Any] = {}
    for name in _section_names(config):
        value = getattr(config, name)
        out[name] = to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], ignore: frozenset[str] = frozenset(), prefix: str = ""
) -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (:func:`to_dict`, or
    one read back from JSON), as ``"key: saved -> current"``. Keys in ``ignore`` and keys
    ``saved`` lacks (written before the key existed) are skipped; tuples equal lists."""
    found = []
    for key, value in current.items():
        name = f"{prefix}{key}"
        if name in ignore or key not in saved:
            continue
        old = saved[key]
        if isinstance(value, dict) and isinstance(old, dict):
            found += config_differences(old, value, ignore, f"{name}.")
        elif json.loads(json.dumps(old)) != json.loads(json.dumps(value)):
            found.append(f"{name}: {json.dumps(old)} -> {json.dumps(value)}")
    return found


def describe_differences(changed: list[str], most: int = 6) -> str:
    """The first ``most`` of :func:`config_differences`' lines joined with "; ", and how many
    more there are."""
    more = f"; and {len(changed) - most} more" if len(changed) > most else ""
    return "; ".join(changed[:most]) + more


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise UserError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of sections")
    return data


def _merge(target: Any, data: dict[str, Any], source: str, prefix: str = "") -> None:
    names = _section_names(target)
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise UserError(f"{source}: unknown config key {dotted!r}; valid keys: {', '.join(names)}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{source}: {dotted!r} must be a mapping")
            _merge(current, value, source, dotted + ".")
        else:
            setattr(target, key, check_type(target, key, value, dotted, source))
