"""The disk cache of exported ONNX graphs: a second engine on the same weights reuses them
(no export, the same masks to the bit); other weights or shapes miss; a damaged entry is
exported again; the folder setting is honoured."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import load_benchmark
from twoshot.config import InferenceConfig, load_config
from twoshot.inference import PropagationEngine
from twoshot.inference.onnx_cache import cache_folder, default_folder

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
fast_agreement = load_benchmark("fast_agreement")

# Small videos: (height, width), frames, the frame a third object enters.
VIDEOS = {"tiny": ((32, 48), 5, 2), "cutie-tiny": ((32, 48), 5, 2), "sam2-toy": ((48, 64), 5, 2)}
# Graphs one run exports: Cutie exports its last three networks again when the third object
# enters (they fix the object count).
PARTS = {"tiny": 3, "cutie-tiny": 7, "sam2-toy": 5}


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings
        yield


def _setup(preset: str) -> tuple[torch.nn.Module, InferenceConfig, list[np.ndarray], dict[int, np.ndarray]]:
    size, frames, enter = VIDEOS[preset]
    video, masks = fast_agreement.entering_video(size, frames, enter)
    config = InferenceConfig(size=-1, device="cpu", top_k=load_config(preset).inference.top_k)
    model = fast_agreement.calibrated_model(preset, config, video, masks[0], 1.0, seed=3)
    return model, config, video, masks


def _run(
    model: torch.nn.Module, config: InferenceConfig, video: list[np.ndarray], masks: dict[int, np.ndarray]
):  # type: ignore[no-untyped-def]
    return PropagationEngine(model, config).propagate(video, masks, probabilities=True)


class _Exports:
    """Counts torch.onnx.export calls; with ``fail`` any call raises."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.calls = 0
        original = torch.onnx.export

        def export(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls += 1
            if fail:
                raise AssertionError("torch.onnx.export called although the graph is cached")
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.onnx, "export", export)


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


@pytest.mark.parametrize("preset", ["tiny", "cutie-tiny", "sam2-toy"])
def test_second_engine_reuses_the_graphs_and_gives_the_same_masks(
    preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model, config, video, masks = _setup(preset)
    config = InferenceConfig(
        **{**config.__dict__, "runtime": "onnxruntime", "onnx_cache": str(tmp_path / "c")}
    )
    first = _run(model, config, video, masks)
    files = _entries(tmp_path / "c")
    assert len(files) == PARTS[preset]
    assert capsys.readouterr().err.count("exported in") == PARTS[preset]
    with monkeypatch.context() as patch:
        _Exports(patch, fail=True)
        second = _run(model, config, video, masks)
    assert capsys.readouterr().err.count("reused from") == PARTS[preset]
    assert np.array_equal(first.masks, second.masks)
    assert first.probabilities is not None and second.probabilities is not None
    assert np.array_equal(first.probabilities, second.probabilities)
    assert _entries(tmp_path / "c") == files


def test_other_weights_or_frame_size_miss_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, config, video, masks = _setup("cutie-tiny")
    config = InferenceConfig(**{**config.__dict__, "runtime": "onnxruntime", "onnx_cache": str(tmp_path)})
    _run(model, config, video, masks)
    count = PARTS["cutie-tiny"]
    assert len(_entries(tmp_path)) == count
    exports = _Exports(monkeypatch)
    # Another frame size (the top half: two objects only): Cutie's graphs fix it, so its four
    # networks are exported again.
    _run(model, config, [np.ascontiguousarray(f[:16]) for f in video], {k: m[:16] for k, m in masks.items()})
    assert exports.calls == 4 and len(_entries(tmp_path)) == count + 4
    # One weight changed in place: every graph of the network is exported again.
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    _run(model, config, video, masks)
    assert exports.calls == 4 + count and len(_entries(tmp_path)) == 2 * count + 4


def test_a_truncated_entry_is_exported_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model, config, video, masks = _setup("tiny")
    config = InferenceConfig(**{**config.__dict__, "runtime": "onnxruntime", "onnx_cache": str(tmp_path)})
    first = _run(model, config, video, masks)
    damaged = _entries(tmp_path)[0]
    whole = damaged.read_bytes()
    damaged.write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    exports = _Exports(monkeypatch)
    second = _run(model, config, video, masks)
    assert exports.calls == 1
    assert f"ONNX graph {damaged} is damaged" in capsys.readouterr().err
    assert damaged.read_bytes() == whole  # the export is deterministic: the same entry again
    assert np.array_equal(first.masks, second.masks)


def test_cache_folder_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOSHOT_CACHE", str(tmp_path / "root"))
    assert default_folder() == tmp_path / "root" / "onnx"
    assert cache_folder(None) == tmp_path / "root" / "onnx"
    monkeypatch.delenv("TWOSHOT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder(None) == tmp_path / "xdg" / "twoshot" / "onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder(None) == tmp_path / "home" / ".cache" / "twoshot" / "onnx"
    assert cache_folder("none") is None and cache_folder("None") is None
    assert cache_folder(str(tmp_path / "d")) == tmp_path / "d"


def test_infer_cli_honours_onnx_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``twoshot infer --runtime onnxruntime``: graphs land in $TWOSHOT_CACHE/onnx by default,
    in ``--onnx-cache DIR`` when given, nowhere with ``--onnx-cache none``."""
    from twoshot.cli import main
    from twoshot.data.fixtures import make_generic
    from twoshot.model import save_weights

    data = make_generic(tmp_path / "data", {"clip": 3}, size=(32, 48), image_ext=".png")
    model, *_ = _setup("tiny")
    save_weights(model, tmp_path / "w.pth")
    monkeypatch.setenv("TWOSHOT_CACHE", str(tmp_path / "env"))
    base = ["infer", "--data", str(data.root), "--checkpoint", str(tmp_path / "w.pth"), "--preset", "tiny"]
    base += ["--device", "cpu", "--no-progress", "--size", "-1", "--no-exact", "--runtime", "onnxruntime"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert len(_entries(tmp_path / "env" / "onnx")) == 3
    assert main([*base, "--out", str(tmp_path / "b"), "--onnx-cache", str(tmp_path / "given")]) == 0
    assert len(_entries(tmp_path / "given")) == 3
    exports = _Exports(monkeypatch)
    assert main([*base, "--out", str(tmp_path / "c"), "--onnx-cache", "none"]) == 0
    assert exports.calls == 3
    assert len(_entries(tmp_path / "env" / "onnx")) == 3 and len(_entries(tmp_path / "given")) == 3


@pytest.mark.parametrize("bad", [False, 3, "", "  "])
def test_a_bad_onnx_cache_setting_is_refused(bad: object) -> None:
    from twoshot.config_checks import check_inference_settings
    from twoshot.errors import UserError

    message = f"inference.onnx_cache {bad!r}: give a folder for the exported ONNX graphs, or none"
    with pytest.raises(UserError, match=re.escape(message)):
        check_inference_settings(InferenceConfig(onnx_cache=bad))  # type: ignore[arg-type]
