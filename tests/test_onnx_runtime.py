"""ONNX export of STCN's, Cutie's and SAM 2's per-frame networks, and the onnxruntime and
openvino runtimes inside the engine."""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import sys
import warnings
from dataclasses import replace
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

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
RUNTIMES = [
    "onnxruntime",
    pytest.param(
        "openvino",
        marks=pytest.mark.skipif(not HAS_OPENVINO, reason="pip install 'twoshot[openvino]'"),
    ),
]


def _tiny(seed: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return fast_agreement.seeded_weights(build_model(load_config("tiny").model), seed)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("preset", ["tiny", "cutie-tiny"])
def test_runtime_engine_agrees_with_torch_on_every_frame(preset: str, runtime: str) -> None:
    """The same engine with the networks run by the runtime: >= 99.9% of each frame's pixels
    equal to the torch fast path, objects entering later, 10 frames of memory, calibrated
    weights (mixed probabilities)."""
    video, masks = fast_agreement.entering_video((48, 64), 10, 3)
    config = InferenceConfig(size=-1, device="cpu", top_k=load_config(preset).inference.top_k)
    model = fast_agreement.calibrated_model(preset, config, video, masks[0], 1.0, seed=3)
    expected = PropagationEngine(model, config).propagate(video, masks, probabilities=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings
        engine = PropagationEngine(
            model, InferenceConfig(size=-1, device="cpu", top_k=config.top_k, runtime=runtime)
        )
        got = engine.propagate(video, masks, probabilities=True)
    assert got.probabilities is not None and expected.probabilities is not None
    # The test is only worth its name if the masks are mixed: every object on frame 9.
    assert set(np.unique(expected.masks[-1]).tolist()) == {0, 1, 2, 3}
    agreement = (got.masks == expected.masks).mean(axis=(1, 2))
    assert all(a >= 0.999 for a in agreement), agreement.round(5).tolist()
    assert np.abs(got.probabilities - expected.probabilities).max() < 1e-2


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _signal_stack_is_usable() -> bool:
    """Whether this thread's alternate signal stack is disabled or lies in mapped memory."""
    stack = _SignalStack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    if stack.ss_flags & 2 or not stack.ss_sp:  # SS_DISABLE
        return True
    with open("/proc/self/maps") as maps:
        spans = [[int(end, 16) for end in line.split()[0].split("-")] for line in maps]
    return any(low <= stack.ss_sp and stack.ss_sp + stack.ss_size <= high for low, high in spans)


@pytest.mark.skipif(not HAS_OPENVINO or sys.platform != "linux", reason="OpenVINO on Linux")
def test_openvino_leaves_the_signal_stack_mapped() -> None:
    """Every OpenVINO CPU plugin installs an alternate signal stack: with one ``Core`` per
    session the main thread was left on an unmapped one, and the next Python signal handler
    (a DataLoader worker's SIGCHLD) killed the process with SIGSEGV."""
    video, masks = fast_agreement.entering_video((48, 64), 4, 3)
    config = InferenceConfig(size=-1, device="cpu", runtime="openvino")
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PropagationEngine(_tiny(), config).propagate(video, masks)
        gc.collect()
        assert _signal_stack_is_usable()


def _export(tmp_path: Path, preset: str, model: torch.nn.Module, *extra: str) -> Path:
    from twoshot.cli import main

    save_weights(model, tmp_path / "w.pth")
    out = tmp_path / "x"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["export", "--checkpoint", str(tmp_path / "w.pth"), "--preset", preset, "--out", str(out)]
        assert main([*args, *extra]) == 0
    return out


def test_export_writes_each_stcn_network_and_they_run(tmp_path: Path) -> None:
    model = _tiny()
    out = _export(tmp_path, "tiny", model)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["decode.onnx", "encode_key.onnx", "encode_value.onnx", "onnx.json"]
    manifest = json.loads((out / "onnx.json").read_text())
    assert manifest["model"] == "stcn" and manifest["parts"]["encode_key"]["outputs"] == [
        "key",
        "thin",
        "f16",
        "f8",
        "f4",
    ]
    session = ort.InferenceSession(str(out / "encode_key.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 80, 112)  # another size than the one traced
    with torch.no_grad():
        feats = model.fast_copy().encode_key(images)
    key = session.run(["key"], {"images": images.numpy()})[0]
    np.testing.assert_allclose(key, feats.key.numpy(), rtol=1e-4, atol=1e-4)


def test_export_writes_cutie_networks_for_one_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = fast_agreement.seeded_weights(build_model(load_config("cutie-tiny").model), 0)
    out = _export(tmp_path, "cutie-tiny", model, "--size", "64", "96", "--objects", "3")
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "decode.onnx",
        "encode_image.onnx",
        "encode_mask.onnx",
        "object_readout.onnx",
        "onnx.json",
    ]
    manifest = json.loads((out / "onnx.json").read_text())
    assert manifest["model"] == "cutie"
    assert manifest["parts"]["decode"]["outputs"] == ["sensory_out", "logits", "prob"]
    assert manifest["parts"]["encode_mask"]["inputs"]["masks"] == [1, 3, 64, 96]
    # The decoder file against the torch decoder on other inputs of the exported shapes.
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.encode_image(images)
        readout = torch.randn(1, 3, *manifest["parts"]["decode"]["inputs"]["readout"][2:])
        sensory = torch.randn(1, 3, model.sensory_dim, 4, 6)
        expected = model.segment(feats.f8, feats.f4, readout, sensory)
    session = ort.InferenceSession(str(out / "decode.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"f8": feats.f8, "f4": feats.f4, "readout": readout, "sensory": sensory}
    got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-4)


def _infer(tmp_path: Path, data: Path, weights: Path, preset: str, out: str, *extra: str) -> int:
    from twoshot.cli import main

    args = ["infer", "--data", str(data), "--checkpoint", str(weights), "--preset", preset]
    args += ["--device", "cpu", "--no-progress", "--out", str(tmp_path / out), "--runtime", "onnxruntime"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main([*args, *extra])


def _labels(folder: Path) -> np.ndarray:
    from twoshot.data.masks import read_mask

    return np.stack([read_mask(p)[0] for p in sorted(folder.glob("*.png"))])


@pytest.mark.parametrize(
    ("preset", "export_args"),
    [("tiny", []), ("cutie-tiny", ["--size", "48", "64", "--objects", "2"])],
)
def test_infer_runs_the_exported_graphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str, export_args: list[str]
) -> None:
    """``twoshot infer --runtime onnxruntime --onnx DIR`` runs the graphs ``twoshot export``
    wrote (nothing is exported: the exporter is disabled) and writes the masks of a run that
    exports them itself."""
    from twoshot.data.fixtures import make_generic
    from twoshot.inference import onnx_runtime

    data = make_generic(tmp_path / "data", {"clip": 5}, size=(48, 64), image_ext=".png")
    torch.manual_seed(1)
    model = fast_agreement.seeded_weights(build_model(load_config(preset).model), 1)
    graphs = _export(tmp_path, preset, model, *export_args)
    extra = ["--no-exact"] if preset == "tiny" else []  # the tiny preset sets inference.exact
    assert (
        _infer(tmp_path, data.root, tmp_path / "w.pth", preset, "exported", "--onnx-cache", "none", *extra)
        == 0
    )

    def no_export(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("exported although --onnx gave the graphs")

    monkeypatch.setattr(onnx_runtime, "export_module", no_export)
    assert (
        _infer(tmp_path, data.root, tmp_path / "w.pth", preset, "given", "--onnx", str(graphs), *extra) == 0
    )
    expected = _labels(tmp_path / "exported" / "clip")
    assert expected.shape == (5, 48, 64) and len(np.unique(expected)) > 1
    np.testing.assert_array_equal(_labels(tmp_path / "given" / "clip"), expected)


def test_infer_refuses_exported_graphs_that_do_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--onnx with graphs of other weights, of the exact network, of another frame size,
    without a runtime, or from a folder without a manifest: a message naming the folder."""
    from twoshot.data.fixtures import make_generic

    data = make_generic(tmp_path / "data", {"clip": 3}, size=(48, 64), image_ext=".png")
    cutie = fast_agreement.seeded_weights(build_model(load_config("cutie-tiny").model), 1)
    graphs = _export(tmp_path / "cutie", "cutie-tiny", cutie, "--size", "64", "64", "--objects", "2")
    weights = tmp_path / "cutie" / "w.pth"
    assert _infer(tmp_path, data.root, weights, "cutie-tiny", "a", "--onnx", str(graphs)) == 2
    message = capsys.readouterr().err
    assert (
        f"{graphs / 'encode_image.onnx'}: exported for inputs images 1x3x64x64, "
        "this run needs images 1x3x48x64" in message
    )
    save_weights(fast_agreement.seeded_weights(cutie, 2), tmp_path / "other.pth")
    assert _infer(tmp_path, data.root, tmp_path / "other.pth", "cutie-tiny", "b", "--onnx", str(graphs)) == 2
    assert f"{graphs}: exported from other weights than this run's; export again" in capsys.readouterr().err
    exact = _export(tmp_path / "stcn", "tiny", _tiny(), "--exact")
    tiny = ["--no-exact"]
    assert (
        _infer(tmp_path, data.root, tmp_path / "stcn" / "w.pth", "tiny", "c", "--onnx", str(exact), *tiny)
        == 2
    )
    assert (
        "(exported with --exact; the runtimes run the fast copy: export without it)"
        in capsys.readouterr().err
    )
    assert _infer(tmp_path, data.root, weights, "cutie-tiny", "d", "--onnx", str(tmp_path)) == 2
    assert f"{tmp_path / 'onnx.json'}: not readable as the manifest" in capsys.readouterr().err
    from twoshot.cli import main

    args = ["infer", "--data", str(data.root), "--checkpoint", str(weights), "--preset", "cutie-tiny"]
    assert main([*args, "--out", str(tmp_path / "e"), "--device", "cpu", "--onnx", str(graphs)]) == 2
    assert (
        "inference.onnx_graphs (--onnx) runs exported graphs: it needs inference.runtime"
        in capsys.readouterr().err
    )
    assert not [p for name in "abcde" for p in (tmp_path / name).rglob("*.png")]


def test_export_refuses_cutie_without_a_size(tmp_path: Path) -> None:
    from twoshot.inference.onnx_runtime import export_onnx

    model = build_model(load_config("cutie-tiny").model)
    message = r"--size \(60, 96\), --objects 2: Cutie's networks are exported for one padded frame size"
    with pytest.raises(UserError, match=message):
        export_onnx(model, tmp_path, size=(60, 96))
    with pytest.raises(UserError, match="--size None"):
        export_onnx(model, tmp_path)


def test_runtime_refuses_other_models_and_settings() -> None:
    from twoshot.inference.onnx_runtime import RuntimeWrap

    with pytest.raises(UserError, match="support the stcn, cutie and sam2 models, not 'Linear'"):
        RuntimeWrap("onnxruntime")(torch.nn.Linear(1, 1).forward, "encode_image")
    with pytest.raises(UserError, match="inference.runtime onnxruntime with inference.exact"):
        PropagationEngine(_tiny(), InferenceConfig(device="cpu", runtime="onnxruntime", exact=True))
    # SAM 2's presets run the reference's bfloat16 mode: the runtime names the key to turn off.
    sam2_config = replace(load_config("sam2-toy").inference, device="cpu", runtime="onnxruntime", exact=False)
    with pytest.raises(UserError, match="inference.runtime onnxruntime with inference.amp"):
        PropagationEngine(build_model(load_config("sam2-toy").model), sam2_config)
    with pytest.raises(
        UserError, match="inference.runtime 'tensorrt': choose one of torch, onnxruntime, openvino"
    ):
        PropagationEngine(_tiny(), InferenceConfig(device="cpu", runtime="tensorrt"))
    # The demo's sam2-toy drops the decoder's high-resolution features, which the graphs carry.
    switched = load_config("sam2-toy", overrides=["model.sam2.use_high_res_features_in_sam=false"])
    with pytest.raises(UserError, match="SAM 2 without model.sam2.use_high_res_features_in_sam"):
        PropagationEngine(build_model(switched.model), replace(sam2_config, amp=False))


# --- SAM 2 ---------------------------------------------------------------------------------

SAM2_VIDEO = ((96, 128), 12, 3)  # frame size, frames, the frame object 3 enters on


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_engine_agrees_with_torch_on_every_frame_sam2(runtime: str) -> None:
    """sam2-toy with its networks run by the runtime: >= 99.9% of each frame's pixels equal
    to the torch path, 12 frames through the memory, object 3 entering on frame 3, weights
    calibrated to mixed probabilities."""
    size, frames, enter = SAM2_VIDEO
    video, masks = fast_agreement.entering_video(size, frames, enter)
    config = InferenceConfig(size=-1, device="cpu")
    model = fast_agreement.calibrated_model("sam2-toy", config, video, masks[0], 1.0, seed=0)
    expected = PropagationEngine(model, config).propagate(video, masks, probabilities=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings
        engine = PropagationEngine(model, replace(config, runtime=runtime))
        got = engine.propagate(video, masks, probabilities=True)
    assert got.probabilities is not None and expected.probabilities is not None
    # Worth its name only with mixed masks: every object from frame 3 on, and on each tracked
    # frame >= 10% of the pixels within 0.2 of the runner-up's probability.
    assert all(set(np.unique(m).tolist()) == {0, 1, 2, 3} for m in expected.masks[enter:])
    top2 = np.sort(expected.probabilities, axis=1)[:, -2:]
    close = (top2[:, 1] - top2[:, 0] < 0.2).mean(axis=(1, 2))
    assert all(close[t] >= 0.1 for t in range(frames) if t not in masks), close.round(3).tolist()
    agreement = (got.masks == expected.masks).mean(axis=(1, 2))
    assert all(a >= 0.999 for a in agreement), agreement.round(5).tolist()
    assert np.abs(got.probabilities - expected.probabilities).max() < 1e-4


def test_sam2_rope_in_real_arithmetic_equals_the_complex_rotation() -> None:
    """The memory attention as exported (real cos / sin rotations, the keys' given as inputs,
    pointer tokens left by cos 1 / sin 0) gives the model's own output to the bit, for
    several counts of memory frames and pointer tokens."""
    from twoshot.inference.onnx_sam2 import key_rotation, real_rope
    from twoshot.model.sam2 import Sam2

    torch.manual_seed(0)
    model = Sam2("toy").eval()
    generator = torch.Generator().manual_seed(1)
    features, positions = (torch.randn(1, 256, 8, 8, generator=generator) for _ in range(2))
    for frames, pointer_tokens in ((1, 4), (3, 12), (7, 64)):
        tokens = frames * 64 + pointer_tokens
        memory, memory_pos = (torch.randn(tokens, 1, 64, generator=generator) for _ in range(2))
        with torch.no_grad():
            expected = model.attend_memory(features, positions, memory, memory_pos, pointer_tokens)
            cos, sin = key_rotation(model, tokens, pointer_tokens, 64, torch.device("cpu"))
            with real_rope(model, cos, sin):
                got = model.attend_memory(features, positions, memory, memory_pos, 0)
        assert torch.equal(got, expected), (frames, pointer_tokens)
    assert "forward" not in vars(model.memory_attention.layers[0].self_attn)  # restored


def test_export_writes_sam2_networks_with_a_dynamic_memory(tmp_path: Path) -> None:
    from twoshot.inference import onnx_sam2
    from twoshot.model.sam2 import Sam2

    torch.manual_seed(0)
    model = Sam2("toy").eval()
    out = _export(tmp_path, "sam2-toy", model)
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "attend_memory.onnx",
        "encode_image.onnx",
        "encode_memory.onnx",
        "mask_as_output.onnx",
        "onnx.json",
        "track_heads.onnx",
    ]
    manifest = json.loads((out / "onnx.json").read_text())
    assert manifest["model"] == "sam2" and manifest["image_size"] == 128
    assert manifest["parts"]["encode_image"]["inputs"]["images"] == [1, 3, 128, 128]
    assert manifest["parts"]["attend_memory"]["inputs"]["memory"] == ["memory_tokens", 1, 64]
    assert manifest["parts"]["track_heads"]["outputs"] == ["low_res", "high_res", "obj_ptr", "object_score"]
    # The memory attention file at another memory length than the one traced (3 frames and
    # 5 pointers of 4 tokens against 2 and 2) against the torch model.
    session = ort.InferenceSession(str(out / "attend_memory.onnx"), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(2)
    features, positions = (torch.randn(1, 256, 8, 8, generator=generator) for _ in range(2))
    tokens, pointer_tokens = 3 * 64 + 20, 20
    memory, memory_pos = (torch.randn(tokens, 1, 64, generator=generator) for _ in range(2))
    cos, sin = onnx_sam2.key_rotation(model, tokens, pointer_tokens, 64, torch.device("cpu"))
    feeds = {"features": features, "positions": positions, "memory": memory, "memory_pos": memory_pos}
    (got,) = session.run(None, {k: v.numpy() for k, v in {**feeds, "key_cos": cos, "key_sin": sin}.items()})
    with torch.no_grad():
        expected = model.attend_memory(features, positions, memory, memory_pos, pointer_tokens)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
    # The image encoder file (its positional table a constant) on another frame than traced.
    session = ort.InferenceSession(str(out / "encode_image.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 128, 128, generator=generator)
    with torch.no_grad():
        feats = model.encode_image(images)
    got_maps = session.run(None, {"images": images.numpy()})
    for a, b in zip(got_maps, [*feats.high_res, feats.features, feats.positions], strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match=r"--size \(64, 64\): SAM 2's networks take its square input"):
        from twoshot.inference.onnx_runtime import export_onnx

        export_onnx(model, tmp_path / "y", size=(64, 64))


def test_missing_runtime_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from twoshot.inference.onnx_runtime import require_runtime

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    message = r"need the optional packages onnx and openvino: pip install 'twoshot\[openvino\]'"
    with pytest.raises(UserError, match=message):
        require_runtime("openvino")


def test_infer_cli_runs_sam2_with_the_runtime_once_the_preset_modes_are_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``twoshot infer --runtime onnxruntime`` on sam2-toy: refused while the preset's exact and
    amp are on, naming the key; with ``--no-exact --no-amp`` the masks agree with the torch
    run of the same flags on >= 99.9% of the pixels."""
    from twoshot.cli import main
    from twoshot.data.fixtures import make_generic
    from twoshot.data.masks import read_mask

    data = make_generic(tmp_path / "data", {"clip": 6}, size=(64, 96), image_ext=".png")
    model = fast_agreement.calibrated_model(
        "sam2-toy",
        InferenceConfig(size=-1, device="cpu"),
        data.frames["clip"],
        data.labels["clip"][0],
        1.0,
        0,
    )
    save_weights(model, tmp_path / "w.pth")
    base = [
        "infer",
        "--data",
        str(data.root),
        "--checkpoint",
        str(tmp_path / "w.pth"),
        "--preset",
        "sam2-toy",
    ]
    base += ["--device", "cpu", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "refused"), "--runtime", "onnxruntime"]) == 2
    assert "inference.runtime onnxruntime with inference.exact" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, extra in (("torch", []), ("onnxruntime", ["--runtime", "onnxruntime"])):
            assert main([*base, "--out", str(tmp_path / name), "--no-exact", "--no-amp", *extra]) == 0
    frames = sorted((tmp_path / "torch" / "clip").glob("*.png"))
    assert len(frames) == 6
    torch_masks = np.stack([read_mask(p)[0] for p in frames])
    runtime_masks = np.stack([read_mask(tmp_path / "onnxruntime" / "clip" / p.name)[0] for p in frames])
    assert set(np.unique(torch_masks[-1]).tolist()) == {0, 1, 2}
    assert (torch_masks == runtime_masks).mean() >= 0.999
