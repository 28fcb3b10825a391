"""Generated VOS data (twoshot.data.synth and `twoshot synth`): layout, labels, determinism, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twoshot.cli import main
from twoshot.data import synth as synth_module
from twoshot.data import synth_textures as textures
from twoshot.data.masks import DAVIS_PALETTE, read_mask
from twoshot.data.synth import generate_dataset, is_synth_output
from twoshot.data.synth_config import SynthConfig
from twoshot.errors import UserError

SMALL = dict(videos=3, frames=8, size=(64, 80), objects=(1, 3), seed=7, val_videos=2, static_images=4)


def _hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth_module.SynthSummary]:
    """One small generated data set shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, generate_dataset(out, **SMALL)


def test_layout_and_file_counts(small: tuple[Path, synth_module.SynthSummary]) -> None:
    out, summary = small
    train = (out / "ImageSets/2017/train.txt").read_text().split()
    val = (out / "ImageSets/2017/val.txt").read_text().split()
    assert train == ["train0000", "train0001", "train0002"] == summary.train
    assert val == ["val0000", "val0001"] == summary.val
    for name in train + val:
        jpgs = sorted(p.name for p in (out / "JPEGImages/480p" / name).iterdir())
        pngs = sorted(p.name for p in (out / "Annotations/480p" / name).iterdir())
        assert jpgs == [f"{t:05d}.jpg" for t in range(8)]
        assert pngs == [f"{t:05d}.png" for t in range(8)]
        with Image.open(out / "JPEGImages/480p" / name / "00003.jpg") as image:
            assert image.size == (80, 64) and image.mode == "RGB"
    assert sorted(p.name for p in (out / "JPEGImages/480p").iterdir()) == sorted(train + val)
    static = sorted(p.name for p in (out / "static").iterdir())
    assert static == [f"{i:05d}.{ext}" for i in range(4) for ext in ("jpg", "png")]
    # 5 videos x 8 frames x 2 files + 2 image sets + 4 static pairs + synth.json
    assert summary.files == 80 + 2 + 8 + 1 == len(_hashes(out))
    assert is_synth_output(out)
    # No temporary folder left next to the output.
    assert [p.name for p in out.parent.iterdir()] == ["data"]


def test_annotations_ids_and_first_frame(small: tuple[Path, synth_module.SynthSummary]) -> None:
    out, summary = small
    meta = json.loads((out / "synth.json").read_text())
    assert meta["static_mask_values"] == [0, 255]
    for name in summary.train + summary.val:
        n = meta["videos"][name]["objects"]
        assert 1 <= n <= 3
        for t in range(8):
            labels, palette = read_mask(out / "Annotations/480p" / name / f"{t:05d}.png")
            assert labels.shape == (64, 80)
            assert palette is not None and palette[:30] == DAVIS_PALETTE[:30]
            ids = set(np.unique(labels).tolist())
            assert ids <= set(range(n + 1)), (name, t, ids)
            if t == 0:
                # Semi-supervised VOS starts from frame 0: every object must be in it.
                assert ids == set(range(n + 1)), (name, ids)
                counts = np.bincount(labels.ravel(), minlength=n + 1)
                assert counts[1:].min() >= 9


def test_static_masks_are_0_255(small: tuple[Path, synth_module.SynthSummary]) -> None:
    out, _ = small
    for mask_path in sorted((out / "static").glob("*.png")):
        with Image.open(mask_path) as image:
            assert image.mode == "L"
            values = np.asarray(image)
        assert set(np.unique(values).tolist()) == {0, 255}
        assert (values == 255).mean() > 0.01


def test_deterministic_bytes(tmp_path: Path, small: tuple[Path, synth_module.SynthSummary]) -> None:
    out, _ = small
    again = tmp_path / "again"
    generate_dataset(again, **SMALL)
    assert _hashes(again) == _hashes(out)
    other = tmp_path / "other"
    generate_dataset(other, **{**SMALL, "seed": 8})
    assert _hashes(other) != _hashes(out)


def test_more_videos_keep_the_earlier_ones(
    tmp_path: Path, small: tuple[Path, synth_module.SynthSummary]
) -> None:
    out, _ = small
    more = tmp_path / "more"
    generate_dataset(more, **{**SMALL, "videos": 4, "static_images": 0})
    a, b = _hashes(out), _hashes(more)
    for key in a:
        if key.startswith(("JPEGImages/480p/train0002", "Annotations/480p/val0001")):
            assert a[key] == b[key]


def test_occlusion_and_exits_happen_with_default_knobs(tmp_path: Path) -> None:
    out = tmp_path / "d"
    summary = generate_dataset(
        out, videos=8, frames=16, size=(64, 64), objects=(2, 3), seed=1, val_videos=0, static_images=0
    )
    stats = summary.stats
    assert stats["object_frames"] > 8 * 16 * 2 - 1
    assert 0 < stats["occluded"] < 0.8
    assert 0 < stats["out_of_frame"] < 0.8
    assert 0 < stats["absent"] < 0.5
    # Cross-check the absences against the written masks: an object absent from a frame's
    # PNG must be listed in synth.json, and at least one exists.
    meta = json.loads((out / "synth.json").read_text())
    seen = 0
    for name in summary.train:
        n = meta["videos"][name]["objects"]
        absent = meta["videos"][name]["absent_frames"]
        for t in range(16):
            labels, _ = read_mask(out / "Annotations/480p" / name / f"{t:05d}.png")
            present = set(np.unique(labels).tolist())
            for obj in range(1, n + 1):
                if obj not in present:
                    assert t in absent[str(obj)]
                    seen += 1
    assert seen > 0


def test_procedural_textures_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With no bundled photos (another scikit-image, or none) generation must still work.
    monkeypatch.setattr(textures, "load_photos", lambda: ())
    summary = generate_dataset(
        tmp_path / "p", videos=1, frames=4, size=(48, 48), objects=(1, 2), val_videos=0, static_images=1
    )
    assert summary.files == 8 + 2 + 2 + 1
    knobs = SynthConfig(photo_textures=False)
    generate_dataset(
        tmp_path / "q",
        videos=1,
        frames=3,
        size=(48, 48),
        objects=(1, 1),
        val_videos=0,
        static_images=0,
        config=knobs,
    )


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(videos=0), "--videos"),
        (dict(frames=0), "--frames"),
        (dict(frames=1), "at least 2 frames"),
        (dict(objects=(3, 2)), "MIN is larger than MAX"),
        (dict(objects=(0, 2)), "at least 1 object"),
        (dict(size=(16, 64)), "--size"),
        (dict(objects=(30, 40)), "cannot all be visible"),
        (dict(val_videos=-1), "--val-videos"),
        (dict(static_images=-2), "--static-images"),
        (dict(config=SynthConfig(object_size=(0.2, 0.7))), "larger than the frame"),
        (dict(config=SynthConfig(exit_prob=1.5)), "exit_prob"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path: Path, changes: dict, words: str) -> None:
    out = tmp_path / "never"
    args = {**SMALL, **changes}
    with pytest.raises(UserError, match=words.replace("-", r"\-")):
        generate_dataset(out, **args)
    assert list(tmp_path.iterdir()) == []


def test_foreign_folder_is_refused_and_previous_output_replaced(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a previous"):
        generate_dataset(foreign, videos=1, frames=2, size=(48, 48), val_videos=0, static_images=0)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        generate_dataset(a_file, videos=1, frames=2, size=(48, 48), val_videos=0, static_images=0)
    # An empty folder and a previous synth output are fine; the latter is replaced whole.
    out = tmp_path / "out"
    out.mkdir()
    generate_dataset(out, videos=2, frames=2, size=(48, 48), val_videos=0, static_images=0)
    generate_dataset(out, videos=1, frames=3, size=(48, 48), val_videos=0, static_images=0)
    assert sorted(p.name for p in (out / "JPEGImages/480p").iterdir()) == ["train0000"]
    assert len(list((out / "JPEGImages/480p/train0000").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "out"]


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = synth_module.write_mask

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # like a killed run
        return real(*args, **kwargs)

    monkeypatch.setattr(synth_module, "write_mask", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "d", videos=2, frames=4, size=(48, 48), val_videos=0, static_images=0)
    assert list(tmp_path.iterdir()) == []


def test_knob_overrides() -> None:
    config = SynthConfig().with_overrides(
        ["exit_prob=0.5", "distractors=1,3", "photo_textures=false", "keyframe_every=4"]
    )
    assert config.exit_prob == 0.5 and config.distractors == (1, 3)
    assert config.photo_textures is False and config.keyframe_every == 4
    with pytest.raises(UserError, match="KEY=VALUE"):
        SynthConfig().with_overrides(["nonsense=1"])
    with pytest.raises(UserError, match="not a valid value"):
        SynthConfig().with_overrides(["motion=fast"])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--videos",
            "1",
            "--val-videos",
            "1",
            "--frames",
            "3",
            "--size",
            "48",
            "64",
            "--objects",
            "1",
            "2",
            "--static-images",
            "2",
            "--seed",
            "3",
            "--difficulty",
            "hard",
            "noise=1",
        ]
    )
    assert code == 0
    assert "1 train + 1 val videos" in capsys.readouterr().out
    meta = json.loads((out / "synth.json").read_text())
    assert meta["config"]["noise"] == 1.0 and meta["config"]["exit_prob"] == 0.5
    assert meta["arguments"]["size"] == [48, 64]
    for argv, words in [
        (["--videos", "0"], "--videos 0"),
        (["--frames", "0"], "--frames 0"),
        (["--objects", "3", "1"], "MIN is larger than MAX"),
        (["--size", "8", "8"], "--size 8 8"),
        (["exit_prob=2"], "exit_prob"),
        (["speed=2"], "KEY=VALUE"),
    ]:
        code = main(["synth", "--out", str(tmp_path / "bad")] + argv)
        assert code == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    assert main(["synth", "--out", str(tmp_path / "busy")]) == 2
    assert "not a previous" in capsys.readouterr().err


def test_generate_or_reuse_refuses_other_arguments(tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert synth_module.generate_or_reuse(out, **SMALL) is True
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert synth_module.generate_or_reuse(out, **SMALL) is False
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamp
    with pytest.raises(UserError) as error:
        synth_module.generate_or_reuse(out, **{**SMALL, "seed": SMALL["seed"] + 1, "frames": 5})
    message = str(error.value)
    assert message.startswith(f"{out / 'synth.json'}: {out} holds videos generated with other arguments")
    assert (
        f"arguments.frames: {SMALL['frames']} -> 5; arguments.seed: {SMALL['seed']} -> {SMALL['seed'] + 1}"
        in message
    )
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamp


def test_quick_demo_has_its_own_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from twoshot.demo import run_demo

    seen: list[Path] = []

    def stop(data: Path, **_: object) -> bool:
        seen.append(Path(data))
        raise UserError("stop here")

    monkeypatch.setattr(synth_module, "generate_or_reuse", stop)
    monkeypatch.chdir(tmp_path)
    for quick in (True, False):
        with pytest.raises(UserError, match="stop here"):
            run_demo(quick=quick, log=lambda _: None)
    assert seen == [Path("twoshot-demo-quick/data"), Path("twoshot-demo/data")]
