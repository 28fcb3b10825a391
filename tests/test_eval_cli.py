"""``twoshot eval`` and ``evaluate_folders``: layouts, tables, CSV files and every input error."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twoshot.cli import main
from twoshot.data.masks import write_mask
from twoshot.evaluate import evaluate_folders

H, W = 50, 50  # tolerance r = 1


def square(y: int, x: int, label: int = 1, size: int = 10) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y : y + size, x : x + size] = label
    return m


def make_davis(
    root: Path, videos: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], val: list[str] | None = None
) -> tuple[Path, Path]:
    """DAVIS root ``root/davis`` and predictions ``root/pred`` from {video: (gt, pred)}."""
    gt_root, pred_root = root / "davis", root / "pred"
    for name, (gts, preds) in videos.items():
        for t, (g, p) in enumerate(zip(gts, preds)):
            write_mask(gt_root / "Annotations" / "480p" / name / f"{t:05d}.png", g)
            write_mask(pred_root / name / f"{t:05d}.png", p)
    sets = gt_root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("\n".join(val if val is not None else videos) + "\n")
    return gt_root, pred_root


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Video "shift": one square, predicted 3 columns right in the scored frames
    (J = 70/130, F = 1/2, see test_metrics). Video "two": two objects, object 1 perfect,
    object 2 never predicted (J = F = 0)."""
    gt_shift = [square(10, 10)] * 5
    pred_shift = [square(10, 10)] + [square(10, 13)] * 3 + [square(10, 10)]
    gt_two = [square(10, 10) + square(30, 30, 2)] * 4
    pred_two = [square(10, 10)] * 4
    return make_davis(tmp_path, {"shift": (gt_shift, pred_shift), "two": (gt_two, pred_two)})


# 3 objects: shift_1 (J 7/13, F 1/2), two_1 (1, 1), two_2 (0, 0).
J_MEAN = (70 / 130 + 1 + 0) / 3
F_MEAN = (0.5 + 1 + 0) / 3


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tables_with_hand_worked_values(
    dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gt_root, pred_root = dataset
    code, out, _ = run_cli(capsys, "--pred", str(pred_root), "--gt", str(gt_root))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    values = [float(x) for x in lines[1].split()]
    assert values == pytest.approx([(J_MEAN + F_MEAN) / 2, J_MEAN, 2 / 3, 0, F_MEAN, 1 / 3, 0], abs=5e-4)
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert rows["Sequence"] == ["J-Mean", "F-Mean"]
    assert rows["shift_1"] == ["0.538", "0.500"]
    assert rows["two_1"] == ["1.000", "1.000"] and rows["two_2"] == ["0.000", "0.000"]


def test_api_returns_full_precision(dataset: tuple[Path, Path]) -> None:
    gt_root, pred_root = dataset
    result = evaluate_folders(pred_root, gt_root)
    assert [s.name for s in result.sequences] == ["shift", "two"]
    assert [o.name for o in result.objects] == ["shift_1", "two_1", "two_2"]
    assert result.scores["J-Mean"] == pytest.approx(J_MEAN, abs=1e-12)
    assert result.j_and_f == pytest.approx((J_MEAN + F_MEAN) / 2, abs=1e-12)
    assert result.sequences[0].frame_names == ("00001", "00002", "00003")
    parallel = evaluate_folders(pred_root, gt_root, workers=2)
    assert parallel.scores == result.scores
    assert [o.name for o in parallel.objects] == [o.name for o in result.objects]


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_csv_prefix_and_folder(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_root, pred_root = dataset
    prefix = tmp_path / "out" / "run1"
    code, _, _ = run_cli(capsys, "--pred", str(pred_root), "--gt", str(gt_root), "--csv", str(prefix))
    assert code == 0
    glob = read_csv(tmp_path / "out" / "run1_global_results.csv")
    assert glob[0] == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    assert glob[1] == [f"{v:.3f}" for v in [(J_MEAN + F_MEAN) / 2, J_MEAN, 2 / 3, 0, F_MEAN, 1 / 3, 0]]
    per = read_csv(tmp_path / "out" / "run1_per-sequence_results.csv")
    assert per == [
        ["Sequence", "J-Mean", "F-Mean"],
        ["shift_1", "0.538", "0.500"],
        ["two_1", "1.000", "1.000"],
        ["two_2", "0.000", "0.000"],
    ]

    folder = tmp_path / "davis_names"
    folder.mkdir()
    code, out, _ = run_cli(capsys, "--pred", str(pred_root), "--gt", str(gt_root), "--csv", str(folder))
    assert code == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "global_results-val.csv",
        "per-sequence_results-val.csv",
    ]
    assert read_csv(folder / "per-sequence_results-val.csv") == per
    assert f"wrote {folder / 'global_results-val.csv'}" in out


def test_plain_folder_and_sequence_list(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_root, pred_root = dataset
    listing = tmp_path / "seqs.txt"
    listing.write_text("two\n\n")
    plain = gt_root / "Annotations" / "480p"
    code, out, _ = run_cli(capsys, "--pred", str(pred_root), "--gt", str(plain), "--sequences", str(listing))
    assert code == 0
    assert "two_2" in out and "shift_1" not in out
    every = evaluate_folders(pred_root, plain)  # no list: every video folder
    assert [s.name for s in every.sequences] == ["shift", "two"]


def test_parallel_cli_matches(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    gt_root, pred_root = dataset
    _, serial, _ = run_cli(capsys, "--pred", str(pred_root), "--gt", str(gt_root))
    code, parallel, _ = run_cli(capsys, "--pred", str(pred_root), "--gt", str(gt_root), "--workers", "2")
    assert code == 0 and parallel == serial


def test_no_progress_silences_the_bar(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    gt_root, pred_root = dataset
    _, with_bar, bar = run_cli(capsys, "--pred", str(pred_root), "--gt", str(gt_root))
    code, without_bar, err = run_cli(capsys, "--pred", str(pred_root), "--gt", str(gt_root), "--no-progress")
    assert "video/s" in bar and err == ""
    assert code == 0 and without_bar == with_bar


# ----------------------------------------------------------------- errors: exit 2, no output


def expect_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    gt: Path,
    pred: Path,
    *needles: str,
    extra: tuple[str, ...] = (),
) -> None:
    out_dir = tmp_path / "csv_out"
    code, out, err = run_cli(
        capsys, "--pred", str(pred), "--gt", str(gt), "--csv", str(out_dir / "r"), *extra
    )
    assert code == 2
    assert err.startswith("twoshot eval: error: ") or "twoshot eval: error: " in err
    message = err.split("twoshot eval: error: ", 1)[1]
    for needle in needles:
        assert needle in message
    assert "Traceback" not in err
    assert out == ""
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_missing_prediction_video(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_root, pred_root = dataset
    for png in (pred_root / "two").iterdir():
        png.unlink()
    (pred_root / "two").rmdir()
    expect_error(capsys, tmp_path, gt_root, pred_root, str(pred_root / "two"), "missing")


def test_missing_prediction_frame(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_root, pred_root = dataset
    (pred_root / "shift" / "00002.png").unlink()
    expect_error(capsys, tmp_path, gt_root, pred_root, str(pred_root / "shift" / "00002.png"), "missing")
    # The first and last frames are not scored, so their predictions are optional.
    write_mask(pred_root / "shift" / "00002.png", square(10, 13))
    (pred_root / "shift" / "00000.png").unlink()
    (pred_root / "shift" / "00004.png").unlink()
    assert evaluate_folders(pred_root, gt_root).scores["J-Mean"] == pytest.approx(J_MEAN)


def test_parallel_scores_every_video_once(dataset: tuple[Path, Path]) -> None:
    """More videos than processes: this process and the spawned workers share them, and the
    result equals the serial one video for video, in the requested order."""
    gt_root, pred_root = dataset
    annotations = gt_root / "Annotations" / "480p"
    names = []
    for copy in range(3):
        for video in ("shift", "two"):
            name = f"{video}{copy}"
            shutil.copytree(annotations / video, annotations / name)
            shutil.copytree(pred_root / video, pred_root / name)
            names.append(name)
    serial = evaluate_folders(pred_root, gt_root, names)
    for workers in (2, 3):
        parallel = evaluate_folders(pred_root, gt_root, names, workers=workers)
        assert [s.name for s in parallel.sequences] == names
        assert [o.name for o in parallel.objects] == [o.name for o in serial.objects]
        assert parallel.scores == serial.scores


# With 2 processes this one scores "shift" and the spawned worker "two" (the workers take
# videos from the end of the list): the error is raised from either side.
@pytest.mark.parametrize("workers, video", [("1", "two"), ("2", "two"), ("2", "shift")])
def test_prediction_of_another_size(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str, video: str
) -> None:
    gt_root, pred_root = dataset
    bad = pred_root / video / "00001.png"
    write_mask(bad, np.zeros((H, W + 4), np.uint8))
    expect_error(
        capsys, tmp_path, gt_root, pred_root, str(bad), "54x50", "50x50", extra=("--workers", workers)
    )


def test_unreadable_png(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_root, pred_root = dataset
    bad = pred_root / "shift" / "00003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    expect_error(capsys, tmp_path, gt_root, pred_root, str(bad), "cannot read")


def test_rgb_mask(dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_root, pred_root = dataset
    bad = gt_root / "Annotations" / "480p" / "shift" / "00001.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8), mode="RGB").save(bad)
    expect_error(capsys, tmp_path, gt_root, pred_root, str(bad), "RGB")


def test_empty_ground_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    expect_error(capsys, tmp_path, gt, pred, str(gt), "no video folders")
    (gt / "v").mkdir()
    (pred / "v").mkdir()
    expect_error(capsys, tmp_path, gt, pred, str(gt / "v"), "no PNG masks")
    for t in range(2):
        write_mask(gt / "v" / f"{t:05d}.png", square(1, 1))
    expect_error(capsys, tmp_path, gt, pred, str(gt / "v"), "at least 3")
    write_mask(gt / "v" / "00002.png", square(1, 1))
    write_mask(pred / "v" / "00001.png", square(1, 1))
    for t in range(3):  # masks with no object in the first frame: nothing to score
        write_mask(gt / "v" / f"{t:05d}.png", np.zeros((H, W), np.uint8))
    expect_error(capsys, tmp_path, gt, pred, "no object to score")


def test_bad_lists_and_options(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_root, pred_root = dataset
    missing = tmp_path / "nope.txt"
    expect_error(capsys, tmp_path, gt_root, pred_root, str(missing), extra=("--sequences", str(missing)))
    listing = tmp_path / "seqs.txt"
    listing.write_text("shift\nghost\n")
    expect_error(
        capsys,
        tmp_path,
        gt_root,
        pred_root,
        "ghost",
        "ground-truth folder",
        extra=("--sequences", str(listing)),
    )
    listing.write_text("shift\ntwo\nshift\n")
    expect_error(
        capsys, tmp_path, gt_root, pred_root, "more than once", "shift", extra=("--sequences", str(listing))
    )
    expect_error(capsys, tmp_path, gt_root, pred_root, "--workers -1", extra=("--workers", "-1"))
    (gt_root / "ImageSets" / "2017" / "val.txt").unlink()
    expect_error(capsys, tmp_path, gt_root, pred_root, "val.txt", "--sequences")
    expect_error(capsys, tmp_path, tmp_path / "absent", pred_root, "not a folder")
