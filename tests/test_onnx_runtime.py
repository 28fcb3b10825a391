"""ONNX export of STCN's per-frame networks and the onnxruntime runtime inside the engine."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import load_benchmark
from twoshot.config import InferenceConfig, load_config
from twoshot.errors import UserError
from twoshot.inference import PropagationEngine
from twoshot.model import build_model, save_weights

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
fast_agreement = load_benchmark("fast_agreement")


def _tiny(seed: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return fast_agreement.seeded_weights(build_model(load_config("tiny").model), seed)


def test_onnxruntime_engine_agrees_with_torch_on_every_frame() -> None:
    """The same engine with the networks run by ONNX Runtime: >= 99.9% of each frame's pixels
    equal to the torch path, objects entering later, 10 frames of memory."""
    video, masks = fast_agreement.entering_video((48, 64), 10, 3)
    config = InferenceConfig(size=-1, device="cpu")
    model = fast_agreement.calibrated_model("tiny", config, video, masks[0], 1.0, seed=3)
    expected = PropagationEngine(model, config).propagate(video, masks, probabilities=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings
        engine = PropagationEngine(model, InferenceConfig(size=-1, device="cpu", runtime="onnxruntime"))
        got = engine.propagate(video, masks, probabilities=True)
    assert got.probabilities is not None and expected.probabilities is not None
    agreement = (got.masks == expected.masks).mean(axis=(1, 2))
    assert all(a >= 0.999 for a in agreement), agreement.round(5).tolist()
    assert np.abs(got.probabilities - expected.probabilities).max() < 1e-3


def test_export_writes_each_network_and_they_run(tmp_path: Path) -> None:
    model = _tiny()
    save_weights(model, tmp_path / "w.pth")
    from twoshot.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (
            main(
                [
                    "export",
                    "--checkpoint",
                    str(tmp_path / "w.pth"),
                    "--preset",
                    "tiny",
                    "--out",
                    str(tmp_path / "x"),
                ]
            )
            == 0
        )
    files = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert files == ["decode.onnx", "encode_key.onnx", "encode_value.onnx", "onnx.json"]
    manifest = json.loads((tmp_path / "x" / "onnx.json").read_text())
    assert manifest["model"] == "stcn" and manifest["parts"]["encode_key"]["outputs"] == [
        "key",
        "thin",
        "f16",
        "f8",
        "f4",
    ]
    session = ort.InferenceSession(
        str(tmp_path / "x" / "encode_key.onnx"), providers=["CPUExecutionProvider"]
    )
    images = torch.randn(1, 3, 80, 112)  # another size than the one traced
    with torch.no_grad():
        feats = model.fast_copy().encode_key(images)
    key = session.run(["key"], {"images": images.numpy()})[0]
    np.testing.assert_allclose(key, feats.key.numpy(), rtol=1e-4, atol=1e-4)


def test_onnxruntime_refuses_cutie_and_other_settings() -> None:
    cutie = build_model(load_config("cutie-tiny").model)
    with pytest.raises(UserError, match="support STCN only"):
        PropagationEngine(cutie, InferenceConfig(device="cpu", runtime="onnxruntime"))
    with pytest.raises(UserError, match="inference.runtime onnxruntime with inference.exact"):
        PropagationEngine(_tiny(), InferenceConfig(device="cpu", runtime="onnxruntime", exact=True))
    with pytest.raises(UserError, match="inference.runtime 'tensorrt': choose one of torch, onnxruntime"):
        PropagationEngine(_tiny(), InferenceConfig(device="cpu", runtime="tensorrt"))
