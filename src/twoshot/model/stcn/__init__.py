"""STCN (Cheng et al., NeurIPS 2021, hkchengrex/STCN), the two-shot paper's model.

Modules: :mod:`.spec` (what twoshot knows of it), :mod:`.network` (the :class:`STCN` network
with the published parameter names), :mod:`.modules` (its encoders and decoder),
:mod:`.memory` (the L2 affinity read), :mod:`.memory_store` and :mod:`.propagator`
(inference), :mod:`.weights` (stage-0 checkpoints).
"""
