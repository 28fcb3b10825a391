"""Every rule a configuration must follow, checked in one place before anything runs.

:func:`check_config` runs when a configuration is loaded (:func:`twoshot.config.load_config`):
each section on its own, the model's own sections (its spec's checks), settings of another
model left at their defaults, and the inference settings for the configured model.
:func:`check_stage` adds the rules that depend on what will run: a stage's ``lr_steps``
within its ``iterations`` and, for the two-shot phases, ``twoshot.end_warm`` before
``main.iterations``; commands call it before they read data or write a file.

Every refusal is a :class:`~twoshot.errors.UserError` whose message names the key
(``config key 'main.lr_steps': ...``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twoshot.errors import UserError

if TYPE_CHECKING:
    from twoshot.config import (
        Config,
        InferenceConfig,
        ModelConfig,
        PipelineConfig,
        TrainConfig,
        TwoShotConfig,
    )
    from twoshot.model.spec import ModelSpec

MAX_OBJECTS = 254
"""Most objects a clip can hold: label-map ids 1..254 (0 is background, 255 "don't care")."""

MERGES: tuple[str, ...] = ("nearest", "fused")
"""The ways bidirectional propagation merges directions (``inference.merge``)."""

AMP_DTYPES: tuple[str, ...] = ("float16", "bfloat16")
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
"""What runs the per-frame networks (``inference.runtime``)."""
TRAIN_STAGES: tuple[str, ...] = ("static", "main")
BASELINES: tuple[str, ...] = ("naive", "full")
"""The baselines ``twoshot pipeline`` can train next to the two-shot models."""
DATASETS: tuple[str, ...] = ("davis", "youtube", "generic")


def check_config(config: Config) -> None:
    """Raise UserError naming the first key of ``config`` that no command can run with."""
    check_model_config(config.model)
    check_model_only_keys(config)
    for stage in TRAIN_STAGES:
        check_train_config(getattr(config, stage), stage, config.model.kind)
    check_twoshot_config(config.twoshot)
    check_inference_settings(config.inference, config.model.kind)
    check_pipeline_config(config.pipeline, need_data=False)


def check_stage(config: Config, stage: str, two_shot: bool = False) -> None:
    """Raise UserError naming the key if training ``stage`` (``static`` | ``main``) cannot run
    as configured: a model whose training recipe refuses to be built (SAM 2's), a
    learning-rate step outside 1..iterations, or (``two_shot``: phase 1,
    whose warm-up must end) ``twoshot.end_warm`` not before ``main.iterations``."""
    cfg: TrainConfig = getattr(config, stage)
    from twoshot.train.objectives import objective_for

    objective_for(config.model.kind, cfg)  # a model that cannot train (SAM 2) refuses here
    late = [step for step in cfg.lr_steps if not 1 <= step <= cfg.iterations]
    if late:
        raise UserError(
            f"config key '{stage}.lr_steps': every step must be within 1..{stage}.iterations "
            f"({cfg.iterations}), got {cfg.lr_steps}"
        )
    if two_shot and stage == "main" and config.twoshot.end_warm >= cfg.iterations:
        raise UserError(
            f"config key 'twoshot.end_warm': the warm-up must end before main.iterations "
            f"({cfg.iterations}), got {config.twoshot.end_warm}"
        )


def _refuse(checks: list[tuple[bool, str, str]], values: Any, prefix: str) -> None:
    for ok, key, what in checks:
        if not ok:
            raise UserError(f"config key '{prefix}{key}': {what}, got {getattr(values, key)!r}")


def registered_spec(kind: str) -> ModelSpec:
    """The spec of the registered model ``kind`` (``model.kind``); UserError naming that key
    and the registered models otherwise."""
    from twoshot.model.registry import model_kinds, spec_for

    if kind not in model_kinds():
        raise UserError(
            f"config key 'model.kind': {kind!r} is not a model; choose one of: {', '.join(model_kinds())}"
        )
    return spec_for(kind)


def check_model_config(model: ModelConfig) -> None:
    """Raise UserError naming the key if ``model`` describes no network twoshot can build."""
    spec = registered_spec(model.kind)
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
    positive = ("key_width", "value_width", "key_dim", "value_dim")
    _refuse([(getattr(model, name) >= 1, name, "must be at least 1") for name in positive], model, "model.")
    if not model.decoder_dims or any(d < 1 for d in model.decoder_dims):
        raise UserError(
            f"config key 'model.decoder_dims': widths must be at least 1, got {model.decoder_dims}"
        )
    check = spec.check_model
    if check is not None:
        check(model)


def check_model_only_keys(config: Config) -> None:
    """UserError naming the key if a setting only another model kind reads differs from its
    default (e.g. ``main.cutie.num_points`` with ``model.kind: stcn``). Defaults are left
    alone, so saved configurations, which hold every key, load as before."""
    import dataclasses

    from twoshot.config import plugin_sections

    for section_name in ("model", *TRAIN_STAGES):
        for kind, value in plugin_sections(getattr(config, section_name)).items():
            if kind == config.model.kind:
                continue
            default = type(value)()
            for item in dataclasses.fields(value):
                if getattr(value, item.name) != getattr(default, item.name):
                    raise UserError(
                        f"config key '{section_name}.{kind}.{item.name}' is a {kind} setting, but "
                        f"model.kind is {config.model.kind!r}; remove it or set model.kind: {kind}"
                    )


def check_train_config(cfg: TrainConfig, stage: str, kind: str | None = None) -> None:
    """Raise UserError naming the key if training section ``stage`` is out of range on its
    own (and, with ``kind``, for that model's own settings ``<stage>.<kind>``)."""
    checks = [
        (cfg.iterations >= 1, "iterations", "must be >= 1"),
        (cfg.batch_size >= 1, "batch_size", "must be >= 1"),
        (cfg.num_frames >= 2, "num_frames", "must be >= 2"),
        (cfg.num_workers >= 0, "num_workers", "must be >= 0"),
        (cfg.save_every >= 1, "save_every", "must be >= 1"),
        (cfg.log_every >= 1, "log_every", "must be >= 1"),
        (cfg.image_every >= 1, "image_every", "must be >= 1"),
        (cfg.crop_size >= 16, "crop_size", "must be >= 16"),
        (0.0 <= cfg.translate < 0.5, "translate", "must be in [0, 0.5)"),
        (cfg.lr > 0, "lr", "must be > 0"),
        (cfg.weight_decay >= 0, "weight_decay", "must be >= 0"),
        (0.0 < cfg.lr_gamma <= 1.0, "lr_gamma", "must be in (0, 1]"),
        (0.0 < cfg.loss_top_p <= 1.0, "loss_top_p", "must be in (0, 1]"),
        (cfg.loss_start_warm >= 0, "loss_start_warm", "must be >= 0"),
        (cfg.loss_end_warm >= cfg.loss_start_warm, "loss_end_warm", "must be >= loss_start_warm"),
        (cfg.grad_clip is None or cfg.grad_clip > 0, "grad_clip", "must be > 0 or null"),
        (list(cfg.lr_steps) == sorted(cfg.lr_steps), "lr_steps", "must be in increasing order"),
    ]
    _refuse(checks, cfg, f"{stage}.")
    if not 1 <= cfg.num_objects <= MAX_OBJECTS:
        raise UserError(
            f"config key '{stage}.num_objects': objects per training clip must be between 1 "
            f"and {MAX_OBJECTS}, got {cfg.num_objects}"
        )
    check_curriculum(cfg.max_skip_values, cfg.max_skip_fractions, f"{stage}.")
    if kind is not None:
        check: Callable[[TrainConfig, str], None] | None = registered_spec(kind).check_train
        if check is not None:
            check(cfg, stage)


def check_curriculum(values: Sequence[int], fractions: Sequence[float], prefix: str = "") -> None:
    """Raise UserError naming ``<prefix>max_skip_values`` / ``max_skip_fractions`` if the
    max-skip curriculum's lists do not fit together."""
    if len(values) != len(fractions) + 1:
        raise UserError(
            f"config key '{prefix}max_skip_values': max_skip_values needs one more entry than "
            f"max_skip_fractions (got {len(values)} values, {len(fractions)} fractions)"
        )
    if any(v < 1 for v in values):
        raise UserError(
            f"config key '{prefix}max_skip_values': max_skip_values must all be >= 1, got {list(values)}"
        )
    if any(not 0.0 <= f <= 1.0 for f in fractions) or list(fractions) != sorted(fractions):
        raise UserError(
            f"config key '{prefix}max_skip_fractions': max_skip_fractions must be increasing, "
            f"in [0, 1]; got {list(fractions)}"
        )


def check_twoshot_config(twoshot: TwoShotConfig) -> None:
    """Raise UserError naming the key if a two-shot setting is out of range."""
    if twoshot.rounds < 1:
        raise UserError(
            f"config key 'twoshot.rounds': must be at least 1 (1 = the paper: one bank, one "
            f"phase 2), got {twoshot.rounds}"
        )
    checks = [
        (twoshot.end_warm >= 0, "end_warm", "must be >= 0"),
        (0.0 <= twoshot.ema_alpha <= 1.0, "ema_alpha", "must be in [0, 1]"),
        (0.0 < twoshot.pseudo_threshold <= 1.0, "pseudo_threshold", "must be in (0, 1]"),
        (0.0 <= twoshot.labeled_clip_share <= 1.0, "labeled_clip_share", "must be in [0, 1]"),
        (twoshot.phase2_start_update >= 0, "phase2_start_update", "must be >= 0"),
        (0.0 < twoshot.refine_threshold <= 1.0, "refine_threshold", "must be in (0, 1]"),
    ]
    if twoshot.teacher is not None and not twoshot.teacher.strip():
        raise UserError("config key 'twoshot.teacher': empty; give a checkpoint file or null")
    _refuse(checks, twoshot, "twoshot.")


def check_pipeline_config(pipeline: PipelineConfig, need_data: bool = True) -> None:
    """Raise UserError naming the key if the ``pipeline`` section is out of range (with
    ``need_data``: also if ``pipeline.data`` is unset, as ``twoshot pipeline`` needs it)."""
    from twoshot.data.budget import STRATEGIES

    if need_data and not pipeline.data:
        raise UserError("pipeline.data is not set: the dataset root to train on")
    unknown = [b for b in pipeline.baselines if b not in BASELINES]
    if unknown:
        raise UserError(f"pipeline.baselines: unknown {unknown}; choose from {list(BASELINES)}")
    checks = [
        (
            pipeline.dataset is None or pipeline.dataset in DATASETS,
            "dataset",
            f"choose {', '.join(DATASETS)} or null",
        ),
        (pipeline.shots >= 1, "shots", "must be at least 1"),
        (pipeline.budget_strategy in STRATEGIES, "budget_strategy", f"choose one of {', '.join(STRATEGIES)}"),
        (pipeline.eval_workers >= 1, "eval_workers", "must be at least 1"),
    ]
    _refuse(checks, pipeline, "pipeline.")


def check_inference_settings(config: InferenceConfig, kind: str | None = None) -> None:
    """Raise UserError naming the key if propagation cannot run under ``config`` (and, with
    ``kind``, with that model, which must be registered). Called at load and again by the engine, the bank and
    ``twoshot infer`` after its flags changed the settings, before any work."""
    checks = [
        (config.mem_every >= 1, "mem_every", "must be at least 1"),
        (config.top_k >= 1, "top_k", "must be at least 1"),
        (config.size == -1 or config.size >= 16, "size", "use -1 (native size) or at least 16 pixels"),
        (
            config.max_memory_frames is None or config.max_memory_frames >= 1,
            "max_memory_frames",
            "must be at least 1 or null",
        ),
        (config.key_batch is None or config.key_batch >= 1, "key_batch", "must be at least 1 or null"),
        (config.amp_dtype in AMP_DTYPES, "amp_dtype", f"choose one of {', '.join(AMP_DTYPES)}"),
    ]
    _refuse(checks, config, "inference.")
    if config.merge not in MERGES:
        raise UserError(f"inference.merge {config.merge!r}: choose one of {', '.join(MERGES)}")
    if not config.scales:
        raise UserError("inference.scales is empty: give at least one factor (1.0 = the plain run)")
    bad = [s for s in config.scales if not s > 0]
    if bad:
        raise UserError(f"inference.scales {config.scales}: every factor must be above 0, got {bad}")
    if len(set(config.scales)) != len(config.scales):
        raise UserError(f"inference.scales {config.scales}: a factor is repeated")
    if config.exact and (config.channels_last or config.compile):
        option = "channels_last" if config.channels_last else "compile"
        raise UserError(
            f"inference.exact with inference.{option}: {option} is not bit-identical to the "
            "reference; drop one of the two"
        )
    if config.runtime not in RUNTIMES:
        raise UserError(f"inference.runtime {config.runtime!r}: choose one of {', '.join(RUNTIMES)}")
    cache = config.onnx_cache
    if cache is not None and (not isinstance(cache, str) or not cache.strip()):
        raise UserError(
            f"inference.onnx_cache {cache!r}: give a folder for the exported ONNX graphs, or none "
            "to export in every process"
        )
    graphs = config.onnx_graphs
    if graphs is not None and (not isinstance(graphs, str) or not graphs.strip()):
        raise UserError(f"inference.onnx_graphs {graphs!r}: give the folder twoshot export wrote")
    if graphs is not None and config.runtime == "torch":
        raise UserError(
            "inference.onnx_graphs (--onnx) runs exported graphs: it needs inference.runtime "
            "onnxruntime or openvino"
        )
    if config.runtime != "torch" and (config.exact or config.compile or config.amp):
        option = "exact" if config.exact else "compile" if config.compile else "amp"
        raise UserError(
            f"inference.runtime {config.runtime} with inference.{option}: the runtime runs its own "
            "fp32 kernels; drop one of the two"
        )
    if kind is not None:
        spec = registered_spec(kind)
        if config.offload and not spec.offload:
            from twoshot.model.registry import model_kinds, spec_for

            offloading = ", ".join(k for k in model_kinds() if spec_for(k).offload)
            raise UserError(
                f"inference.offload: the {kind} model keeps its features on the device; "
                f"only {offloading} can offload them"
            )
        check = spec.check_inference
        if check is not None:
            check(config)
