"""STCN as a twoshot model plugin (see :mod:`twoshot.model.spec`)."""

from __future__ import annotations

from twoshot.model.spec import ModelSpec

SPEC = ModelSpec(
    kind="stcn",
    network="twoshot.model.stcn.network:STCN",
    objective="twoshot.train.objectives:STCNObjective",
    checkpoint_prefixes=("key_encoder.", "value_encoder."),
    upgrade_state="twoshot.model.stcn.weights:upgrade_state",
    presets=("stcn", "tiny"),
    demo_preset="tiny",
    # 1/8 matching: the demo's 64-96 pixel frames leave a few cells per object at 1/16.
    demo_overrides=("model.output_stride=8",),
)
