"""Typed configuration: one dataclass per stage, YAML presets shipped in the package, and
``section.key=value`` overrides from the command line.

A preset file (``configs/<name>.yaml``) has one mapping per section of :class:`Config`. Values
not given keep the dataclass default. Overrides are parsed with YAML's scalar rules
(``1e-5`` is a float, ``true`` a bool, ``[1, 2]`` a list) and checked against the field's
type; an unknown key or a value of the wrong type raises :class:`UserError` naming the key and
the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from twoshot.errors import UserError

MODEL_KINDS: tuple[str, ...] = ("stcn", "cutie")
"""The architectures ``model.kind`` may name (classes in :mod:`twoshot.model.registry`)."""


@dataclass
class CutieSizes:
    """Sizes only Cutie has (``model.cutie``; refused with an STCN model unless at the defaults).

    The defaults are Cutie-base.

    Cutie's pixel / mask encoders, ``key_dim``, ``value_dim`` and its mask decoder's widths
    (``decoder_dims``, the first equal to ``embed_dim``) come from :class:`ModelConfig`.
    """

    pixel_dim: int = 256  # pixel features and the key projection's input
    sensory_dim: int = 256  # per-object recurrent (sensory) state
    embed_dim: int = 256  # object transformer width; equals pixel_dim
    num_queries: int = 16  # object queries = object summaries (half fore-, half background)
    num_heads: int = 8
    ff_dim: int = 2048
    num_blocks: int = 3  # object transformer blocks
    pe_scale: float = 32.0  # sine positional encoding: coordinates scaled to [0, pe_scale]
    pe_temperature: float = 128.0


@dataclass
class ModelConfig:
    """Network architecture and sizes. The defaults are the published STCN (``stcn`` preset).

    ``kind`` picks the architecture (:data:`MODEL_KINDS`); the
    encoder fields serve both models (STCN's key / value encoders are Cutie's pixel / mask
    encoders).
    """

    kind: str = "stcn"  # stcn | cutie
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
    cutie: CutieSizes = field(default_factory=CutieSizes)


@dataclass
class CutieTrainSettings:
    """Training settings only Cutie uses (``static.cutie`` / ``main.cutie``; refused with STCN).

    Defaults are the reference's main training (``train_config.yaml``); its pre-training
    samples 8192 points and reads 2 reference frames.
    """

    num_points: int = 12544  # loss points per frame (PointRend-style uncertainty sampling)
    oversample_ratio: float = 3.0  # candidate points per loss point
    importance_ratio: float = 0.75  # share of the loss points picked by uncertainty
    sensory_aux_weight: float = 0.01  # aux loss on the sensory memory's logits
    query_aux_weight: float = 0.01  # aux loss on the object transformer's logits (every level)
    backbone_lr_ratio: float = 0.1  # pixel encoder learning rate = lr x this
    embed_weight_decay: float = 0.0  # weight decay of the query embeddings
    num_ref_frames: int = 3  # memory frames a training frame reads
    deep_update_prob: float = 0.2  # chance that encoding a predicted mask updates the sensory memory
    grad_scale: float = 8192.0  # initial AMP loss scale


@dataclass
class TrainConfig:
    """One training stage (static pretraining, main training, two-shot phase 1 or 2)."""

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
    cutie: CutieTrainSettings = field(default_factory=CutieTrainSettings)


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


RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime")  # values of inference.runtime


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
    # Which runtime runs the networks: "torch", or "onnxruntime" (STCN only, CPU, the optional
    # onnx extra; twoshot.inference.onnx_runtime, docs/inference.md).
    runtime: str = "torch"
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


PRESETS = ("stcn", "tiny", "cutie-base", "cutie-small", "cutie-tiny")


def preset_path(name: str) -> Path:
    """Path of the shipped preset YAML ``name``; UserError listing the presets if unknown."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return Path(str(resources.files("twoshot") / "configs" / f"{name}.yaml"))


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
    check_model_config(config.model)
    check_model_only_keys(config)
    check_train_sections(config)
    check_twoshot_config(config.twoshot)
    return config


MAX_OBJECTS = 254
"""Most objects a clip can hold: label-map ids 1..254 (0 is background, 255 "don't care")."""


def check_train_sections(config: Config) -> None:
    """Raise UserError naming the key if a training section asks for clips no dataset can make
    (``num_objects`` outside 1..:data:`MAX_OBJECTS`)."""
    for name in ("static", "main"):
        objects = getattr(config, name).num_objects
        if not 1 <= objects <= MAX_OBJECTS:
            raise UserError(
                f"config key '{name}.num_objects': objects per training clip must be between 1 "
                f"and {MAX_OBJECTS}, got {objects}"
            )


def check_twoshot_config(twoshot: TwoShotConfig) -> None:
    """Raise UserError naming the key if a two-shot setting is out of range."""
    if twoshot.rounds < 1:
        raise UserError(
            f"config key 'twoshot.rounds': must be at least 1 (1 = the paper: one bank, one "
            f"phase 2), got {twoshot.rounds}"
        )


_MODEL_ONLY_SECTIONS: dict[str, tuple[str, ...]] = {
    # Sections only one model kind reads: setting them for another kind is a mistake.
    "cutie": ("model.cutie", "static.cutie", "main.cutie"),
}


def check_model_only_keys(config: Config) -> None:
    """UserError naming the key if a setting only another model kind reads differs from its
    default (e.g. ``main.cutie.num_points`` with ``model.kind: stcn``). Defaults are left
    alone, so saved configurations, which hold every key, load as before."""
    for kind, sections in _MODEL_ONLY_SECTIONS.items():
        if config.model.kind == kind:
            continue
        for dotted in sections:
            section_name, field_name = dotted.split(".")
            value = getattr(getattr(config, section_name), field_name)
            default = type(value)()
            for item in dataclasses.fields(value):
                if getattr(value, item.name) != getattr(default, item.name):
                    raise UserError(
                        f"config key '{dotted}.{item.name}' is a {kind} setting, but model.kind is "
                        f"{config.model.kind!r}; remove it or set model.kind: {kind}"
                    )


def check_model_config(model: ModelConfig) -> None:
    """Raise UserError naming the key if ``model`` describes no network twoshot can build."""
    if model.kind not in MODEL_KINDS:
        raise UserError(
            f"config key 'model.kind': {model.kind!r} is not a model; choose one of: {', '.join(MODEL_KINDS)}"
        )
    for name in ("key_block", "value_block"):
        if getattr(model, name) not in ("basic", "bottleneck"):
            raise UserError(
                f"config key 'model.{name}': {getattr(model, name)!r} is not a ResNet "
                "block; choose basic or bottleneck"
            )
    for name in ("key_layers", "value_layers"):
        layers = getattr(model, name)
        if len(layers) != 3 or any(n < 1 for n in layers):
            raise UserError(f"config key 'model.{name}': {layers} must give 3 stages of >= 1 block")
    if model.output_stride not in (8, 16):
        raise UserError(f"config key 'model.output_stride': must be 8 or 16, got {model.output_stride}")
    if model.kind == "cutie":
        _check_cutie_sizes(model)


def _check_cutie_sizes(model: ModelConfig) -> None:
    """Raise UserError naming the key if the Cutie sizes of ``model`` build no network."""
    sizes = model.cutie
    for name in ("pixel_dim", "sensory_dim", "embed_dim", "num_queries", "num_heads", "ff_dim", "num_blocks"):
        if getattr(sizes, name) < 1:
            raise UserError(
                f"config key 'model.cutie.{name}': must be at least 1, got {getattr(sizes, name)}"
            )
    if model.output_stride != 16:
        raise UserError(
            "config key 'model.output_stride': cutie needs 16 (its decoder upsamples "
            f"1/16 -> 1/8 -> 1/4), got {model.output_stride}"
        )
    if len(model.decoder_dims) != 3 or model.decoder_dims[0] != sizes.embed_dim:
        raise UserError(
            f"config key 'model.decoder_dims': cutie's mask decoder needs 3 widths, the "
            f"first equal to model.cutie.embed_dim ({sizes.embed_dim}), got {model.decoder_dims}"
        )
    if sizes.pixel_dim != sizes.embed_dim:
        raise UserError(
            f"config key 'model.cutie.pixel_dim': must equal model.cutie.embed_dim "
            f"({sizes.embed_dim}; the sensory auxiliary head multiplies them), got {sizes.pixel_dim}"
        )
    if sizes.embed_dim % 4 or sizes.embed_dim % sizes.num_heads:
        raise UserError(
            f"config key 'model.cutie.embed_dim': must be a multiple of 4 (positional "
            f"encoding) and of model.cutie.num_heads ({sizes.num_heads}), got {sizes.embed_dim}"
        )
    if sizes.num_queries % 2:
        raise UserError(
            f"config key 'model.cutie.num_queries': must be even (half foreground, half "
            f"background), got {sizes.num_queries}"
        )


def apply_override(config: Any, item: str) -> None:
    """Apply one ``section.key=value`` override to ``config`` in place."""
    if "=" not in item:
        raise UserError(f"override {item!r} is not of the form key=value (e.g. main.lr=1e-4)")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    target = config
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
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
            setattr(target, part, _check_type(target, part, value, dotted))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise UserError(f"config key {dotted!r}: {part!r} is a value, not a section")


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for saving next to checkpoints and reports)."""
    return dataclasses.asdict(config)


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
    names = {f.name: f for f in dataclasses.fields(target)}
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
            setattr(target, key, _check_type(target, key, value, dotted, source))


def _check_type(target: Any, name: str, value: Any, dotted: str, source: str = "override") -> Any:
    hints = typing.get_type_hints(type(target))
    expected = hints[name]
    coerced = _coerce(value, expected)
    if coerced is _INVALID:
        raise UserError(f"{source}: config key {dotted!r} expects {_type_name(expected)}, got {value!r}")
    return coerced


_INVALID = object()


def _coerce(value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(expected):
            result = _coerce(value, option)
            if result is not _INVALID:
                return result
        return _INVALID
    if expected is type(None):
        return None if value is None else _INVALID
    if origin is list:
        if not isinstance(value, list):
            return _INVALID
        (item_type,) = typing.get_args(expected)
        items = [_coerce(v, item_type) for v in value]
        return _INVALID if any(i is _INVALID for i in items) else items
    if expected is bool:
        return value if isinstance(value, bool) else _INVALID
    if expected is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; users mean a number.
            try:
                return float(value)
            except ValueError:
                return _INVALID
        return _INVALID
    if expected is str:
        return (
            value
            if isinstance(value, str)
            else (str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _INVALID)
        )
    return value


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(expected))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(expected)[0])}"
    if expected is type(None):
        return "null"
    return getattr(expected, "__name__", str(expected))
