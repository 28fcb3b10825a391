"""Dataset readers: DAVIS, YouTube-VOS, generic folders, video files, and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from twoshot.data.fixtures import make_davis, make_generic, make_video_file, make_youtube
from twoshot.data.folders import DATASET_LAYOUTS
from twoshot.data.masks import write_mask
from twoshot.data.readers import (
    detect_layout,
    load_annotations,
    load_frames,
    open_dataset,
    reference_annotations,
)
from twoshot.errors import UserError


def _jpeg_close(read: np.ndarray, generated: np.ndarray, tol: float = 8.0) -> bool:
    """JPEG / video compression is lossy: compare mean absolute error."""
    return read.shape == generated.shape and float(np.abs(read.astype(float) - generated).mean()) < tol


@pytest.fixture()
def davis(tmp_path: Path):
    return make_davis(tmp_path / "davis", {"bear": 6, "cat": 5}, splits={"train": ["bear"], "val": ["cat"]})


@pytest.fixture()
def youtube(tmp_path: Path):
    return make_youtube(tmp_path / "yt")


# --------------------------------------------------------------------------------------------
# Layouts


def test_davis_split_selects_videos_and_reads_back_exactly(davis) -> None:
    (seq,) = open_dataset("davis", davis.root, "train")
    assert seq.name == "bear" and seq.num_frames == 6
    assert seq.frame_names == ["00000", "00001", "00002", "00003", "00004", "00005"]
    assert sorted(seq.mask_paths) == [0, 1, 2, 3, 4, 5]
    assert [s.name for s in open_dataset("davis", davis.root, "val")] == ["cat"]
    assert [s.name for s in open_dataset("davis", davis.root)] == ["bear", "cat"]
    frames = load_frames(seq)
    assert frames.shape == (6, 24, 32, 3) and frames.dtype == np.uint8
    assert _jpeg_close(frames, davis.frames["bear"])
    labels, palette = load_annotations(seq)
    assert all(np.array_equal(labels[i], davis.labels["bear"][i]) for i in range(6))
    assert set(np.unique(labels[0])) == {0, 1, 2}
    assert palette is not None and palette[3:6] == bytes((128, 0, 0))  # DAVIS red for id 1
    assert load_frames(seq, [4, 1]).shape == (2, 24, 32, 3)


def test_dataset_layout_names_the_folders_the_readers_read(tmp_path: Path, davis, youtube) -> None:
    """DatasetLayout's image and annotation roots (what the annotation app, the pipeline and
    ``infer`` rely on) are the folders open_dataset reads, for every layout and a split."""
    make_generic(tmp_path / "generic" / "part", {"dog": 4})  # a generic split sub-folder
    cases = [(davis.root, "davis", "train"), (youtube.root, "youtube", "train")]
    for root, layout, split in [*cases, (tmp_path / "generic", "generic", "part")]:
        rules = DATASET_LAYOUTS[layout]
        for seq in open_dataset(layout, root, split):
            assert {p.parent for p in seq.frame_paths} == {rules.image_root(root, split) / seq.name}
            assert {p.parent for p in seq.mask_paths.values()} == {
                rules.annotation_root(root, split) / seq.name
            }
    video = make_video_file(tmp_path / "clip.mp4", 3)
    assert (
        DATASET_LAYOUTS["video"].annotation_root(video.root, None)
        == video.masks_dir
        == tmp_path / "clip_masks"
    )


def test_davis_full_resolution(tmp_path: Path) -> None:
    data = make_davis(tmp_path / "d", {"bear": 3}, resolution="Full-Resolution")
    (seq,) = open_dataset("davis", data.root, "train", resolution="Full-Resolution")
    assert seq.num_frames == 3 and "Full-Resolution" in str(seq.frame_paths[0])
    with pytest.raises(UserError, match=r"480p: folder is missing"):
        open_dataset("davis", data.root, "train")


def test_youtube_late_object_and_non_contiguous_ids(youtube) -> None:
    seqs = open_dataset("youtube", youtube.root, "train")
    assert [s.name for s in seqs] == ["a1b2c3", "d4e5f6"]
    seq = seqs[0]
    assert seq.num_frames == 16
    assert sorted(seq.mask_paths) == [0, 5, 10, 15]  # annotations every 5th frame
    assert seq.object_first_frame == {1: 0, 3: 5}  # object 3 appears at frame 5
    assert seq.frames_to_save is None  # training split
    labels, _ = load_annotations(seq, [0, 5])
    assert set(np.unique(labels[0])) == {0, 1}
    assert set(np.unique(labels[5])) == {0, 1, 3}
    assert np.array_equal(labels[5], youtube.labels["a1b2c3"][5])


def test_youtube_valid_split_frames_to_save_and_reference_masks(tmp_path: Path) -> None:
    data = make_youtube(tmp_path / "yt", split="valid")
    seq = open_dataset("youtube", data.root, "valid")[0]
    assert seq.frames_to_save == [0, 5, 10, 15]
    assert sorted(seq.mask_paths) == [0, 5]  # first appearances only
    given, _, first = reference_annotations(seq)
    assert first == {1: 0, 3: 5}
    assert set(np.unique(given[0])) == {0, 1} and set(np.unique(given[5])) == {0, 3}
    # root pointing at the split folder itself works too
    assert open_dataset("youtube", data.root / "valid")[0].frames_to_save == [0, 5, 10, 15]


def test_youtube_sampled_frames_layout(tmp_path: Path) -> None:
    data = make_youtube(tmp_path / "yt", {"v": 4}, all_frames=False, first_frames={3: 2})
    (seq,) = open_dataset("youtube", data.root, "train")
    assert seq.frame_names == ["00000", "00005", "00010", "00015"]
    assert sorted(seq.mask_paths) == [0, 1, 2, 3] and seq.object_first_frame == {1: 0, 3: 2}


def test_generic_natural_order_png_frames_and_reference_annotations(tmp_path: Path) -> None:
    names = [f"f{i}" for i in range(1, 11)]
    data = make_generic(tmp_path / "g", {"clip": 10}, names=names, image_ext=".png", first_frames={2: 3})
    (seq,) = open_dataset("generic", data.root)
    assert seq.frame_names == names  # f2 before f10
    assert sorted(seq.mask_paths) == [0, 3]
    frames = load_frames(seq)
    assert np.array_equal(frames, data.frames["clip"])  # PNG frames are lossless
    given, _, first = reference_annotations(seq)
    assert first == {1: 0, 2: 3} and set(np.unique(given[3])) == {0, 2}


def test_video_file_read_back_with_pyav(tmp_path: Path) -> None:
    data = make_video_file(tmp_path / "clip.mp4", 8, mask_frames=(0, 5))
    (seq,) = open_dataset("video", data.root, masks=data.masks_dir)
    assert seq.num_frames == 8 and seq.video_file == data.root and seq.frame_paths == []
    assert sorted(seq.mask_paths) == [0, 5]
    frames = load_frames(seq)
    assert frames.shape == (8, 32, 48, 3)
    assert _jpeg_close(frames, data.frames["clip"])
    assert np.array_equal(load_frames(seq, [5, 2]), frames[[5, 2]])
    labels, _ = load_annotations(seq, [5])
    assert np.array_equal(labels[5], data.labels["clip"][5])
    (seq2,) = open_dataset("video", data.root, masks={0: data.masks_dir / "00000.png"})
    assert sorted(seq2.mask_paths) == [0]


def test_detect_layout(tmp_path: Path, davis, youtube) -> None:
    assert detect_layout(davis.root) == "davis"
    assert detect_layout(youtube.root, "train") == "youtube"
    assert detect_layout(make_generic(tmp_path / "g").root) == "generic"
    assert detect_layout(make_video_file(tmp_path / "v.mp4", 2).root) == "video"
    with pytest.raises(UserError, match="not a DAVIS, YouTube-VOS or generic"):
        detect_layout(tmp_path / "g" / "JPEGImages")


def test_only_requested_pngs_are_opened(monkeypatch, davis, youtube) -> None:
    opened: list[str] = []
    real_open = PIL.Image.open

    def spy(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", spy)
    (seq,) = open_dataset("davis", davis.root, "train")
    ytseqs = open_dataset("youtube", youtube.root, "train")
    assert opened == []  # opening lists folders only
    load_annotations(seq, [2])
    load_annotations(ytseqs[0], [10])
    pngs = [Path(p).name for p in opened if p.endswith(".png")]
    assert pngs == ["00002.png", "00010.png"]


# --------------------------------------------------------------------------------------------
# Errors: each names the file and the problem


def test_error_missing_split_file(davis) -> None:
    with pytest.raises(
        UserError,
        match=r"2017/test\.txt: split file is missing \(available: "
        r"train, val\)",
    ):
        open_dataset("davis", davis.root, "test")


def test_error_missing_video_folder(davis) -> None:
    (davis.root / "ImageSets/2017/train.txt").write_text("bear\nghost\n")
    with pytest.raises(UserError, match=r"480p/ghost: video folder is missing"):
        open_dataset("davis", davis.root, "train")


def test_error_empty_video(davis) -> None:
    (davis.root / "JPEGImages/480p/empty").mkdir()
    (davis.root / "ImageSets/2017/train.txt").write_text("empty\n")
    with pytest.raises(UserError, match=r"480p/empty: empty video"):
        open_dataset("davis", davis.root, "train")


def test_error_missing_frame_in_numbering(davis) -> None:
    (davis.root / "JPEGImages/480p/bear/00002.jpg").unlink()
    with pytest.raises(UserError, match=r"bear: frame 00002 is missing"):
        open_dataset("davis", davis.root, "train")


def test_error_annotation_without_frame(davis) -> None:
    write_mask(davis.root / "Annotations/480p/bear/00099.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(UserError, match=r"00099\.png: annotation has no matching frame"):
        open_dataset("davis", davis.root, "train")


def test_error_unreadable_frame(davis) -> None:
    (davis.root / "JPEGImages/480p/bear/00001.jpg").write_bytes(b"not a jpeg")
    (seq,) = open_dataset("davis", davis.root, "train")
    with pytest.raises(UserError, match=r"00001\.jpg: cannot read image"):
        load_frames(seq)


def test_error_mask_size_differs_from_frame(davis) -> None:
    write_mask(davis.root / "Annotations/480p/bear/00001.png", np.ones((10, 12), np.uint8))
    (seq,) = open_dataset("davis", davis.root, "train")
    load_annotations(seq, [0])  # other frames are fine
    with pytest.raises(UserError, match=r"00001\.png: mask is 12x10 but its frame is 32x24"):
        load_annotations(seq, [1])


def test_error_rgb_mask(davis) -> None:
    PIL.Image.new("RGB", (32, 24), (128, 0, 0)).save(davis.root / "Annotations/480p/bear/00003.png")
    (seq,) = open_dataset("davis", davis.root, "train")
    with pytest.raises(UserError, match=r"00003\.png: mask is a RGB image; expected an indexed"):
        load_annotations(seq)


def test_error_object_absent_from_its_first_annotated_frame(youtube) -> None:
    path = youtube.root / "train/Annotations/a1b2c3/00005.png"
    labels = youtube.labels["a1b2c3"][5].copy()
    labels[labels == 3] = 0
    write_mask(path, labels)
    seq = open_dataset("youtube", youtube.root, "train")[0]
    load_annotations(seq, [0, 10])
    with pytest.raises(
        UserError,
        match=r"00005\.png: object id 3 is listed in meta\.json as "
        r"first appearing in this frame but is absent",
    ):
        load_annotations(seq, [5])


def test_error_youtube_meta_frame_without_jpeg(youtube) -> None:
    meta_path = youtube.root / "train/meta.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["a1b2c3"]["objects"]["1"]["frames"].append("00099")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"meta\.json: video a1b2c3 object 1 lists frame 00099"):
        open_dataset("youtube", youtube.root, "train")


def test_error_youtube_missing_split_and_video(youtube) -> None:
    with pytest.raises(UserError, match=r"yt/valid: split folder is missing \(available: train\)"):
        open_dataset("youtube", youtube.root, "valid")
    meta_path = youtube.root / "train/meta.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["zzz"] = {"objects": {}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"JPEGImages/zzz: video folder is missing"):
        open_dataset("youtube", youtube.root, "train")


def test_error_youtube_valid_missing_first_frame_png(tmp_path: Path) -> None:
    data = make_youtube(tmp_path / "yt", {"v": 11}, split="valid")
    (data.root / "valid/Annotations/v/00005.png").unlink()
    with pytest.raises(UserError, match=r"00005\.png: missing; meta\.json says object 3 first"):
        open_dataset("youtube", data.root, "valid")


def test_error_video_file_problems(tmp_path: Path) -> None:
    data = make_video_file(tmp_path / "clip.mp4", 4)
    with pytest.raises(UserError, match=r"00009\.png: mask for frame 9, but .*clip\.mp4 has 4 frames"):
        open_dataset("video", data.root, masks={9: tmp_path / "00009.png"})
    with pytest.raises(UserError, match="needs masks"):
        open_dataset("video", data.root)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match=r"bad\.mp4: cannot decode video"):
        open_dataset("video", bad, masks=data.masks_dir)


def test_error_unknown_kind_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown dataset layout 'kitti'"):
        open_dataset("kitti", tmp_path)
    with pytest.raises(UserError, match="nothing: no such folder"):
        open_dataset("davis", tmp_path / "nothing")
