"""The registered models (:class:`~twoshot.model.spec.ModelSpec`), and building one from a config.

Adding a model: a folder ``twoshot/model/<kind>/`` with a ``spec.py`` defining ``SPEC``, and
its line in :data:`BUILTIN_SPECS`. Spec modules are torch-free and imported on first use;
networks only when built, so loading STCN never imports Cutie's code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twoshot.errors import UserError
from twoshot.model.spec import ModelSpec, import_object

if TYPE_CHECKING:  # the configuration reads the specs without importing torch
    from twoshot.config import ModelConfig
    from twoshot.model.interface import VOSModel

BUILTIN_SPECS: tuple[str, ...] = (
    "twoshot.model.stcn.spec:SPEC",
    "twoshot.model.cutie.spec:SPEC",
    "twoshot.model.sam2.spec:SPEC",
)
"""The shipped models, in the order they are listed to the user."""

_REGISTERED: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    """Add ``spec`` to the models (after the built-in ones); ValueError if its kind is taken."""
    specs()
    if spec.kind in _REGISTERED:
        raise ValueError(f"a model named {spec.kind!r} is already registered")
    _REGISTERED[spec.kind] = spec


def unregister(kind: str) -> None:
    """Remove the model ``kind`` registered with :func:`register` (for tests)."""
    specs()
    _REGISTERED.pop(kind, None)


def specs() -> tuple[ModelSpec, ...]:
    """Every registered model's spec, the built-in ones first."""
    if not _REGISTERED:
        for target in BUILTIN_SPECS:
            spec: ModelSpec = import_object(target)
            _REGISTERED[spec.kind] = spec
    return tuple(_REGISTERED.values())


def model_kinds() -> tuple[str, ...]:
    """The names ``model.kind`` may take."""
    return tuple(spec.kind for spec in specs())


def spec_for(kind: str) -> ModelSpec:
    """The spec of model ``kind``; UserError listing the models if unknown."""
    for spec in specs():
        if spec.kind == kind:
            return spec
    raise UserError(f"unknown model {kind!r}; choose one of: {', '.join(model_kinds())}")


def preset_names() -> tuple[str, ...]:
    """Every registered model's presets, in registration order."""
    return tuple(name for spec in specs() for name in spec.presets)


def preset_spec(name: str) -> ModelSpec | None:
    """The spec whose presets include ``name``, or None."""
    for spec in specs():
        if name in spec.presets:
            return spec
    return None


def model_class(kind: str) -> type[VOSModel]:
    """The VOSModel subclass of architecture ``kind``; UserError listing the kinds if unknown."""
    cls: type[VOSModel] = import_object(spec_for(kind).network)
    return cls


def build_model(config: ModelConfig | None = None) -> VOSModel:
    """A randomly initialised model of ``config.kind`` with its sizes (published STCN if None).

    If ``config.backbone_weights`` names torchvision ImageNet ResNet files they are loaded
    into the model's encoders (see :mod:`twoshot.model.backbone_weights`).
    """
    from twoshot.config import ModelConfig
    from twoshot.model.backbone_weights import load_backbone_weights

    config = config or ModelConfig()
    model = model_class(config.kind)(config)
    if config.backbone_weights:
        load_backbone_weights(model, config.backbone_weights)
    return model


# torch.nn.init's random initialisers (and the tensor methods they end in): skipped by
# build_skeleton, whose parameters only need their names and shapes.
_INITIALISERS = frozenset(
    {
        "normal_",
        "uniform_",
        "trunc_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "orthogonal_",
    }
)


def build_skeleton(config: ModelConfig) -> VOSModel:
    """A model of ``config.kind`` with its sizes whose parameters are left uninitialised: for
    comparing names and shapes with a checkpoint, never for running.

    Built on the CPU with the random initialisers skipped rather than on the meta device: on
    meta, torch runs every elementwise operation (the position-encoding buffers the models
    compute when built) through Python references that import ``torch._dynamo`` on first use,
    1.5-2 s of a process's start-up; this takes 0.01-0.14 s a preset and leaves the large
    parameters' memory untouched.
    """
    from torch.overrides import TorchFunctionMode

    class SkipInitialisers(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") in _INITIALISERS:
                return args[0] if args else kwargs["tensor"]
            return func(*args, **kwargs)

    with SkipInitialisers():
        return model_class(config.kind)(config)
