"""Writers: DAVIS-layout masks, YouTube-VOS submissions, overlays, videos (PyAV)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from twoshot.data.fixtures import make_davis, make_youtube
from twoshot.data.masks import DAVIS_PALETTE, read_mask
from twoshot.data.readers import load_annotations, open_dataset
from twoshot.data.writers import (
    boundaries,
    overlay,
    write_davis_masks,
    write_overlay_pngs,
    write_overlay_video,
    write_video,
    write_youtube_submission,
)

# A palette that is not DAVIS's, to see it survive a round trip.
CUSTOM_PALETTE = bytes(range(256)) * 3


def _video_info(path: Path) -> tuple[int, int, int, str]:
    """(frames decoded, height, width, codec name) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.codec_context.height, stream.codec_context.width, stream.codec_context.name


def test_davis_round_trip_preserves_labels_and_palette(tmp_path: Path) -> None:
    data = make_davis(
        tmp_path / "d", {"bear": 4}, object_ids=(1, 2, 7), size=(24, 32), palette=CUSTOM_PALETTE
    )
    (seq,) = open_dataset("davis", data.root, "train")
    labels, palette = load_annotations(seq)
    assert palette == CUSTOM_PALETTE
    folder = write_davis_masks(tmp_path / "out", seq, labels, palette)
    assert folder == tmp_path / "out" / "bear"
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png"]
    for i in range(4):
        back, back_palette = read_mask(folder / f"{seq.frame_names[i]}.png")
        assert np.array_equal(back, data.labels["bear"][i]) and back_palette == CUSTOM_PALETTE
    # No palette given: DAVIS's; a [T, H, W] array is accepted too.
    write_davis_masks(tmp_path / "out2", seq, np.stack([labels[i] for i in range(4)]))
    assert read_mask(tmp_path / "out2/bear/00002.png")[1] == DAVIS_PALETTE


def test_masks_are_resized_to_the_original_size(tmp_path: Path) -> None:
    data = make_davis(tmp_path / "d", {"bear": 2})
    (seq,) = open_dataset("davis", data.root, "train")
    small = np.zeros((12, 16), np.uint8)
    small[3:6, 4:8] = 2
    write_davis_masks(tmp_path / "out", seq, {0: small})
    back, _ = read_mask(tmp_path / "out/bear/00000.png")
    assert back.shape == (24, 32)
    assert np.array_equal(back, np.kron(small, np.ones((2, 2), np.uint8)))


def test_failed_write_leaves_no_half_written_video(tmp_path: Path) -> None:
    data = make_davis(tmp_path / "d", {"bear": 3})
    (seq,) = open_dataset("davis", data.root, "train")
    good = {i: data.labels["bear"][i] for i in range(3)}
    bad = dict(good)
    bad[2] = np.zeros((2, 3, 4), np.uint8)  # not 2-D: write_mask refuses
    with pytest.raises(ValueError):
        write_davis_masks(tmp_path / "out", seq, bad)
    assert list((tmp_path / "out").iterdir()) == []  # no folder, no temporary left
    write_davis_masks(tmp_path / "out", seq, good)
    with pytest.raises(ValueError):
        write_davis_masks(tmp_path / "out", seq, bad)
    # The complete earlier result is still there, untouched.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bear"]
    assert len(list((tmp_path / "out/bear").iterdir())) == 3


def test_youtube_submission_writes_frames_to_save_only(tmp_path: Path) -> None:
    data = make_youtube(tmp_path / "yt", {"v": 16}, split="valid")
    (seq,) = open_dataset("youtube", data.root, "valid")
    masks = data.labels["v"]
    folder = write_youtube_submission(tmp_path / "sub", seq, masks)
    assert folder == tmp_path / "sub/Annotations/v"
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00005.png", "00010.png", "00015.png"]
    assert np.array_equal(read_mask(folder / "00010.png")[0], masks[10])
    write_youtube_submission(tmp_path / "all", seq, masks, all_frames=True)
    assert len(list((tmp_path / "all/Annotations/v").iterdir())) == 16
    with pytest.raises(ValueError, match="no mask for frame"):
        write_youtube_submission(tmp_path / "sub", seq, {0: masks[0]})


def test_overlay_blends_and_draws_boundaries() -> None:
    frame = np.full((6, 6, 3), 100, np.uint8)
    labels = np.zeros((6, 6), np.uint8)
    labels[1:5, 1:5] = 1  # DAVIS colour 1 = (128, 0, 0)
    out = overlay(frame, labels, alpha=0.5)
    assert np.array_equal(out[0, 0], [100, 100, 100])  # background untouched
    assert np.array_equal(out[2, 2], [114, 50, 50])  # 0.5 * 100 + 0.5 * colour
    assert np.array_equal(out[1, 1], [128, 0, 0])  # boundary in full colour
    assert boundaries(labels).sum() == 12  # the ring of a 4x4 square


def test_overlay_pngs_and_overlay_video(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (5, 25, 33, 3), dtype=np.uint8)
    masks = {0: np.ones((25, 33), np.uint8), 3: np.full((25, 33), 2, np.uint8)}
    folder = write_overlay_pngs(tmp_path / "ov", frames, masks, names=[f"f{i}" for i in range(5)])
    assert sorted(p.name for p in folder.iterdir()) == [f"f{i}.png" for i in range(5)]
    path = write_overlay_video(tmp_path / "ov.mp4", frames, masks, fps=12)
    count, height, width, _ = _video_info(path)
    assert (count, height, width) == (5, 26, 34)  # odd sizes padded to even
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_video_falls_back_to_mpeg4_without_x264(tmp_path: Path, monkeypatch) -> None:
    real_codec = av.codec.Codec

    def no_x264(name: str, mode: str = "r"):
        if name == "libx264":
            raise av.codec.codec.UnknownCodecError(name)
        return real_codec(name, mode)

    monkeypatch.setattr(av.codec, "Codec", no_x264)
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    write_video(tmp_path / "a.mp4", frames)
    assert _video_info(tmp_path / "a.mp4") == (3, 16, 16, "mpeg4")
    monkeypatch.setattr(av.codec, "Codec", real_codec)
    write_video(tmp_path / "b.mp4", frames)
    assert _video_info(tmp_path / "b.mp4")[3] == "h264"
