"""bfloat16 inference on a CPU (``inference.amp`` with ``amp_dtype: bfloat16``) and the CPU flags."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import random_video
from twoshot.devices import cpu_bf16_flags, cpu_flags, inference_autocast
from twoshot.errors import UserError
from twoshot.inference import PropagationEngine, engine
from twoshot.model import build_model

CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16
processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16
"""


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    assert cpu_flags(CPUINFO) == ["avx2", "avx512f", "avx512_bf16"]
    assert cpu_bf16_flags(cpu_flags(CPUINFO)) == ["avx512_bf16"]
    assert cpu_flags("flags : sse2 avx2 amx_bf16 amx_tile\n") == ["avx2", "amx_bf16"]
    assert cpu_bf16_flags(["avx2", "avx512f"]) == []
    assert cpu_flags("no flags here") == []


def test_cpu_autocast_is_bfloat16_only() -> None:
    conv, x = torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    cpu = torch.device("cpu")
    with inference_autocast(True, torch.bfloat16, cpu):
        assert conv(x).dtype == torch.bfloat16
    for amp, dtype in ((True, torch.float16), (False, torch.bfloat16)):
        with inference_autocast(amp, dtype, cpu):
            assert conv(x).dtype == torch.float32


def _video() -> tuple[np.ndarray, dict[int, np.ndarray]]:
    video, labels = random_video(4, (48, 64), object_ids=(1, 2), seed=1)
    return video, {0: labels[0]}


@pytest.mark.parametrize("preset", ["tiny", "cutie-tiny"])
def test_bfloat16_inference_runs_the_network_in_bfloat16(preset: str) -> None:
    torch.manual_seed(0)
    model = build_model(load_config(preset).model).eval()
    video, masks = _video()
    dtypes: list[torch.dtype] = []
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [c.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype)) for c in convs]
    bf16 = PropagationEngine(
        model, InferenceConfig(size=-1, device="cpu", amp=True, amp_dtype="bfloat16")
    ).propagate(video, masks, probabilities=True)
    for hook in hooks:
        hook.remove()
    assert torch.bfloat16 in dtypes
    assert bf16.probabilities is not None and bf16.probabilities.dtype == np.float32
    np.testing.assert_allclose(bf16.probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(bf16.masks[0], masks[0])


def test_bfloat16_on_a_cpu_refuses_exact_and_warns_without_native_support(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = build_model(load_config("tiny").model)
    with pytest.raises(UserError, match=r"inference.exact with inference.amp \(bfloat16\) on a CPU"):
        PropagationEngine(model, InferenceConfig(device="cpu", amp=True, amp_dtype="bfloat16", exact=True))
    PropagationEngine(model, InferenceConfig(device="cpu", amp=True, exact=True))  # float16: fp32 on a CPU
    monkeypatch.setattr(engine, "cpu_bf16_flags", lambda: [])
    with pytest.warns(UserWarning, match="without AVX-512 BF16 or AMX"):
        PropagationEngine(model, InferenceConfig(device="cpu", amp=True, amp_dtype="bfloat16"))
    monkeypatch.setattr(engine, "cpu_bf16_flags", lambda: ["amx_bf16"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PropagationEngine(model, InferenceConfig(device="cpu", amp=True, amp_dtype="bfloat16"))
