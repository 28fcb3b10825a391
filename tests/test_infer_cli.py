"""``twoshot infer``: every dataset layout, output layouts, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twoshot.cli import main as cli_main
from twoshot.config import InferenceConfig, load_config, to_dict
from twoshot.data.fixtures import make_davis, make_generic, make_video_file, make_youtube
from twoshot.data.masks import DAVIS_PALETTE, read_mask, write_mask
from twoshot.data.readers import load_frames, open_dataset, reference_annotations
from twoshot.errors import UserError
from twoshot.fsutil import write_json
from twoshot.inference import PropagationEngine
from twoshot.model import STCN, build_model, load_model, save_weights


@pytest.fixture(scope="module")
def model() -> STCN:
    torch.manual_seed(0)
    return build_model(load_config("tiny").model).eval()


@pytest.fixture(scope="module")
def checkpoint(model: STCN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_weights(model, path)
    return path


def _infer(checkpoint: Path, *extra: str) -> int:
    return cli_main(["infer", "--checkpoint", str(checkpoint), "--device", "cpu", *extra])


def _expected(model: STCN, seq, **kwargs) -> np.ndarray:  # type: ignore[no-untyped-def]
    given, _, _ = reference_annotations(seq)
    engine = PropagationEngine(model, InferenceConfig(size=-1, device="cpu"))
    return engine.propagate(load_frames(seq), given, **kwargs).masks


def test_davis(model: STCN, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    palette = bytes(reversed(DAVIS_PALETTE))
    data = make_davis(tmp_path / "davis", {"bear": 6, "cat": 5}, size=(40, 56), palette=palette)
    out = tmp_path / "out"
    assert _infer(checkpoint, "--dataset", "davis", "--data", str(data.root), "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "done: 2 videos, 11 frames, 4 objects" in text and "frames/s" in text
    sequences = open_dataset("davis", data.root, "val")
    for seq in sequences:
        names = sorted(p.name for p in (out / seq.name).iterdir())
        assert names == [f"{n}.png" for n in seq.frame_names]
        written = np.stack([read_mask(out / seq.name / f"{n}.png")[0] for n in seq.frame_names])
        np.testing.assert_array_equal(written, _expected(model, seq))
        assert read_mask(out / seq.name / "00003.png")[1] == palette  # the input's palette
    assert not list(out.glob(".*"))  # no temporary leftovers


def test_no_progress_silences_the_bar(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 4}, size=(32, 32))
    common = ["--data", str(data.root), "--out"]
    assert _infer(checkpoint, *common, str(tmp_path / "a")) == 0
    assert "frame/s" in capsys.readouterr().err  # the tqdm bar
    assert _infer(checkpoint, *common, str(tmp_path / "b"), "--no-progress") == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "done: 1 videos, 4 frames" in captured.out


def test_youtube_submission_layout(model: STCN, checkpoint: Path, tmp_path: Path) -> None:
    data = make_youtube(
        tmp_path / "yt", {"a1b2c3": 16}, split="valid", size=(48, 64), object_ids=(1, 3), first_frames={3: 5}
    )
    out = tmp_path / "out"
    assert _infer(checkpoint, "--data", str(data.root), "--out", str(out)) == 0  # detected, split valid
    folder = out / "Annotations" / "a1b2c3"
    assert sorted(p.stem for p in folder.iterdir()) == ["00000", "00005", "00010", "00015"]
    seq = open_dataset("youtube", data.root, "valid")[0]
    expected = _expected(model, seq)
    for name in ("00005", "00010", "00015"):
        np.testing.assert_array_equal(read_mask(folder / f"{name}.png")[0], expected[int(name)])
    assert 3 in np.unique(expected[10:])  # the object appearing in frame 5 is propagated
    every = tmp_path / "every"
    assert _infer(checkpoint, "--data", str(data.root), "--out", str(every), "--all-frames") == 0
    assert len(list((every / "Annotations" / "a1b2c3").iterdir())) == 16


def test_generic_with_backward_and_overlays(model: STCN, checkpoint: Path, tmp_path: Path) -> None:
    data = make_generic(tmp_path / "gen", {"clip": 7}, size=(48, 64), object_ids=(2,), first_frames={2: 3})
    out = tmp_path / "out"
    assert _infer(checkpoint, "--data", str(data.root), "--out", str(out), "--backward", "--overlay") == 0
    seq = open_dataset("generic", data.root)[0]
    written = np.stack([read_mask(out / "clip" / f"{n}.png")[0] for n in seq.frame_names])
    np.testing.assert_array_equal(written, _expected(model, seq, direction="bidirectional"))
    assert written[:3].any()  # frames before 3 come backwards
    assert len(list((out / "overlays" / "clip").glob("*.png"))) == 7


def test_video_file(model: STCN, checkpoint: Path, tmp_path: Path) -> None:
    data = make_video_file(tmp_path / "clip.mp4", 6, size=(32, 48))
    out = tmp_path / "out"
    assert _infer(checkpoint, "--data", str(data.root), "--out", str(out), "--size", "32") == 0
    assert sorted(p.name for p in (out / "clip").iterdir()) == [f"{i:05d}.png" for i in range(6)]
    assert read_mask(out / "clip" / "00004.png")[0].shape == (32, 48)


# ---------------------------------------------------------------------------------------------
# Errors name the file


def _davis(tmp_path: Path) -> Path:
    return make_davis(tmp_path / "davis", {"bear": 5}, size=(32, 48)).root


def _fails(
    checkpoint: Path, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> str:
    code = _infer(checkpoint, "--data", str(root), "--out", str(tmp_path / "out"), *extra)
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (tmp_path / "out" / "bear").exists()  # nothing half-written
    return err


def test_missing_frame(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _davis(tmp_path)
    (root / "JPEGImages" / "480p" / "bear" / "00002.jpg").unlink()
    assert "bear: frame 00002 is missing" in _fails(checkpoint, root, tmp_path, capsys)


def test_unreadable_frame(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _davis(tmp_path)
    (root / "JPEGImages" / "480p" / "bear" / "00003.jpg").write_bytes(b"not a jpeg")
    assert "00003.jpg: cannot read image" in _fails(checkpoint, root, tmp_path, capsys)


def test_mask_of_another_size(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _davis(tmp_path)
    write_mask(root / "Annotations" / "480p" / "bear" / "00000.png", np.ones((16, 16), np.uint8))
    assert "00000.png: mask is 16x16 but its frame is 48x32" in _fails(checkpoint, root, tmp_path, capsys)


def test_rgb_mask(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _davis(tmp_path)
    Image.new("RGB", (48, 32), (255, 0, 0)).save(root / "Annotations" / "480p" / "bear" / "00000.png")
    assert "00000.png: mask is a RGB image" in _fails(checkpoint, root, tmp_path, capsys)


def test_object_absent_from_its_first_frame(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_youtube(tmp_path / "yt", {"bear": 11}, split="valid", size=(48, 64))
    mask_path = data.root / "valid" / "Annotations" / "bear" / "00005.png"
    write_mask(mask_path, np.zeros((48, 64), np.uint8))
    code = _infer(checkpoint, "--data", str(data.root), "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and "00005.png: object id 3" in err and "absent" in err


def test_empty_video(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _davis(tmp_path)
    for jpg in (root / "JPEGImages" / "480p" / "bear").iterdir():
        jpg.unlink()
    assert "bear: empty video" in _fails(checkpoint, root, tmp_path, capsys)


def test_bad_settings_and_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _davis(tmp_path)
    assert "'inference.mem_every': must be at least 1, got 0" in _fails(
        checkpoint, root, tmp_path, capsys, "--mem-every", "0"
    )
    junk = tmp_path / "junk.pth"
    junk.write_text("nope")
    assert "junk.pth: not a PyTorch checkpoint" in _fails(junk, root, tmp_path, capsys)
    assert "use --preset tiny" in _fails(checkpoint, root, tmp_path, capsys, "--preset", "stcn")


def test_checkpoints_of_another_model_or_size_are_refused(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _davis(tmp_path)
    err = _fails(checkpoint, root, tmp_path, capsys, "--model", "cutie")
    assert (
        "tiny.pth: not a cutie checkpoint: the weights look like a stcn checkpoint; use --model stcn" in err
    )
    assert "(first keys: key_encoder.conv1.weight," in err and "Traceback" not in err
    err = _fails(checkpoint, root, tmp_path, capsys, "--model", "stcn", "--preset", "cutie-small")
    assert "--preset cutie-small is a cutie model but --model stcn was given" in err

    neither = tmp_path / "neither.pth"
    torch.save({"backbone.weight": torch.zeros(2), "head.bias": torch.zeros(1)}, neither)
    err = _fails(neither, root, tmp_path, capsys)
    assert "neither.pth: not a stcn checkpoint: the weights look like no model (stcn, cutie, sam2)" in err
    assert "(first keys: backbone.weight, head.bias)" in err

    torch.manual_seed(0)
    cutie = tmp_path / "cutie-tiny.pth"
    save_weights(build_model(load_config("cutie-tiny").model), cutie)
    err = _fails(cutie, root, tmp_path, capsys, "--model", "stcn")
    assert (
        "cutie-tiny.pth: not a stcn checkpoint: the weights look like a cutie checkpoint; use --model cutie"
        in err
    )
    err = _fails(cutie, root, tmp_path, capsys, "--preset", "cutie-small")
    assert "cutie-tiny.pth: checkpoint does not match the cutie model" in err
    assert "shape mismatches: pixel_encoder.conv1.weight" in err and "use --preset cutie-tiny" in err
    err = _fails(cutie, root, tmp_path, capsys, "--preset", "tiny")
    assert "cutie-tiny.pth: not a stcn checkpoint: the weights look like a cutie checkpoint" in err


def test_weights_load_with_the_config_saved_beside_them(tmp_path: Path) -> None:
    # The output stride is not in the weights: only the config.json that training writes
    # next to them tells a stride-8 model from a stride-16 one with the same parameters.
    preset_stride = load_config("tiny").model.output_stride
    other = 24 - preset_stride  # 8 <-> 16
    config = load_config("tiny", overrides=[f"model.output_stride={other}"])
    torch.manual_seed(1)
    strided = build_model(config.model).eval()
    run = tmp_path / "run"
    save_weights(strided, run / "final.pth")
    write_json(run / "config.json", to_dict(config))  # a pipeline's run configuration
    assert load_model(run / "final.pth").config.output_stride == other
    write_json(run / "config.json", {"stage": "main", "config": to_dict(config)})  # the trainer's
    assert load_model(run / "final.pth").config.output_stride == other

    data = make_davis(tmp_path / "davis", {"bear": 5}, size=(48, 64))
    out = tmp_path / "out"
    assert _infer(run / "final.pth", "--data", str(data.root), "--out", str(out), "--size", "-1") == 0
    seq = open_dataset("davis", data.root, "val")[0]
    written = np.stack([read_mask(out / seq.name / f"{n}.png")[0] for n in seq.frame_names])
    np.testing.assert_array_equal(written, _expected(strided, seq))

    # --preset wins over the saved file; a config.json of something else is ignored.
    assert load_model(run / "final.pth", load_config("tiny").model).config.output_stride == preset_stride
    write_json(run / "config.json", {"name": "not a twoshot run"})
    assert load_model(run / "final.pth").config.output_stride == preset_stride

    write_json(run / "config.json", {"model": {"output_stride": 4}})
    with pytest.raises(UserError, match=r"config\.json.*'model\.output_stride': must be 8 or 16, got 4"):
        load_model(run / "final.pth")
