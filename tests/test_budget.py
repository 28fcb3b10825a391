"""Label budgets: reference file format, strategies, applying a budget, the CLI command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from twoshot.cli import main
from twoshot.data.budget import apply_budget, load_budget, make_budget, save_budget, summarize_budget
from twoshot.data.fixtures import make_davis, make_video_file, make_youtube
from twoshot.data.masks import write_mask
from twoshot.data.readers import load_annotations, load_frames, open_dataset
from twoshot.errors import UserError

# The reference files lie in shared/reference/ beside the repository (as in every clone CI
# makes); a checkout on its own skips these tests, CI fails them.
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.mark.parametrize("name, videos", [("davis_rand_2frames.json", 60), ("yv_rand_2frames.json", 3464)])
def test_reference_budgets_load_unchanged(tmp_path: Path, name: str, videos: int) -> None:
    path = REFERENCE / name
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI lays shared/reference/ beside the repository")
        pytest.skip(f"{path} is not available (shared/reference/ beside the repository)")
    raw = json.loads(path.read_text())
    budget = load_budget(path)
    assert budget == raw and list(budget) == list(raw)  # same content, same order
    assert len(budget) == videos and all(len(frames) == 2 for frames in budget.values())
    if name.startswith("davis"):
        assert budget["bear"] == ["00030.jpg", "00065.jpg"]
    save_budget(tmp_path / "copy.json", budget)
    assert json.loads((tmp_path / "copy.json").read_text()) == raw


def test_load_budget_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.json: budget file is missing"):
        load_budget(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"a\.json: a budget is a JSON object"):
        load_budget(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"bear": "00030.jpg"}')
    with pytest.raises(UserError, match=r"b\.json: video bear: expected a list"):
        load_budget(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{oops")
    with pytest.raises(UserError, match=r"c\.json: cannot read budget JSON"):
        load_budget(tmp_path / "c.json")


@pytest.fixture()
def ten(tmp_path: Path):
    """DAVIS with a 10-frame and a 6-frame video, every frame annotated."""
    data = make_davis(tmp_path / "d", {"ten": 10, "six": 6})
    return data, open_dataset("davis", data.root, "train")


def test_uniform_and_ends_choose_exact_frames(ten) -> None:
    _, seqs = ten
    assert make_budget(seqs, 2, "uniform")["ten"] == ["00002.jpg", "00007.jpg"]
    assert make_budget(seqs, 3, "uniform")["ten"] == ["00001.jpg", "00005.jpg", "00008.jpg"]
    assert make_budget(seqs, 2, "ends")["ten"] == ["00000.jpg", "00009.jpg"]
    assert make_budget(seqs, 3, "ends")["ten"] == ["00000.jpg", "00005.jpg", "00009.jpg"]
    assert make_budget(seqs, 1, "ends")["six"] == ["00000.jpg"]


def test_random_is_seeded_per_video(ten) -> None:
    _, seqs = ten
    a = make_budget(seqs, 3, "random", seed=5)
    assert a == make_budget(seqs, 3, "random", seed=5)
    assert all(len(set(f)) == 3 and f == sorted(f) for f in a.values())
    # A video's draw does not depend on which other videos are in the dataset.
    assert make_budget(seqs[1:], 3, "random", seed=5)["ten"] == a["ten"]
    draws = {tuple(make_budget(seqs, 3, "random", seed=s)["ten"]) for s in range(6)}
    assert len(draws) > 1


def test_empty_png_is_skipped_for_the_nearest_frame(ten) -> None:
    data, seqs = ten
    write_mask(data.root / "Annotations/480p/ten/00007.png", np.zeros((24, 32), np.uint8))
    assert make_budget(seqs, 2, "uniform")["ten"] == ["00002.jpg", "00008.jpg"]
    assert make_budget(seqs, 2, "uniform", require_objects=False)["ten"] == ["00002.jpg", "00007.jpg"]
    assert all("00007.jpg" not in make_budget(seqs, 9, "random", seed=s)["ten"] for s in range(3))


def test_youtube_budget_uses_annotated_frames_only(tmp_path: Path) -> None:
    data = make_youtube(tmp_path / "yt", {"v": 16})
    seqs = open_dataset("youtube", data.root, "train")
    for strategy in ("random", "uniform", "ends"):
        frames = make_budget(seqs, 2, strategy, seed=1)["v"]
        assert all(int(f[:5]) % 5 == 0 for f in frames)
    assert make_budget(seqs, 2, "ends")["v"] == ["00000.jpg", "00015.jpg"]
    # Fewer annotated frames than shots: all of them, flagged in the summary.
    budget = make_budget(seqs, 6, "uniform")
    assert budget["v"] == ["00000.jpg", "00005.jpg", "00010.jpg", "00015.jpg"]
    summary = summarize_budget(seqs, budget, shots=6)
    assert (
        summary.videos,
        summary.labeled_frames,
        summary.total_frames,
        summary.annotated_frames,
        summary.short_videos,
    ) == (1, 4, 16, 4, ["v"])


def test_apply_budget_restricts_masks_and_survives_deleting_unlabeled_pngs(tmp_path: Path) -> None:
    davis = make_davis(tmp_path / "d", {"bear": 8, "cat": 6})
    yt = make_youtube(tmp_path / "yt")
    for layout, data in (("davis", davis), ("youtube", yt)):
        seqs = open_dataset(layout, data.root, "train")
        budget = make_budget(seqs, 2, "random", seed=3)
        keep = set()
        for seq in seqs:
            restricted = apply_budget([seq], {seq.name: budget[seq.name]})[0]
            keep |= set(restricted.mask_paths.values())
        # A real user's dataset has PNGs only for the labeled frames.
        for png in data.root.rglob("*.png"):
            if png not in keep:
                png.unlink()
        seqs = open_dataset(layout, data.root, "train")
        labeled = apply_budget(seqs, budget)
        for seq in labeled:
            assert [seq.frame_paths[i].name for i in sorted(seq.mask_paths)] == budget[seq.name]
            labels, _ = load_annotations(seq)
            assert len(labels) == 2 and all(m.any() for m in labels.values())
            assert load_frames(seq, [0]).shape[0] == 1


def test_apply_budget_accepts_stems_and_video_sources(tmp_path: Path) -> None:
    data = make_video_file(tmp_path / "clip.mp4", 6, mask_frames=(0, 4))
    seqs = open_dataset("video", data.root, masks=data.masks_dir)
    budget = make_budget(seqs, 2, "ends")
    assert budget == {"clip": ["00000", "00004"]}
    assert sorted(apply_budget(seqs, {"clip": ["00004.jpg"]})[0].mask_paths) == [4]


def test_apply_budget_errors(ten) -> None:
    data, seqs = ten
    with pytest.raises(UserError, match="budget names video.* not in the dataset: ghost"):
        apply_budget(seqs, {"ghost": ["00000.jpg"]})
    with pytest.raises(UserError, match="video ten has no frame 00042.jpg"):
        apply_budget(seqs, {"ten": ["00042.jpg"]})
    with pytest.raises(UserError, match="video ten has no labeled frame"):
        apply_budget(seqs, {"ten": []})
    with pytest.raises(UserError, match="video six has no labeled frame"):
        apply_budget(seqs, {"ten": ["00001.jpg"]}, unlisted="error")
    assert [s.name for s in apply_budget(seqs, {"ten": ["00001.jpg"]})] == ["ten"]
    (data.root / "Annotations/480p/ten/00003.png").unlink()
    with pytest.raises(
        UserError,
        match=r"ten/00003\.png: annotation PNG of labeled frame 00003 "
        r"\(video ten\) is missing",
    ):
        apply_budget(seqs, {"ten": ["00003.jpg"]})
    write_mask(data.root / "Annotations/480p/ten/00004.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(UserError, match=r"00004\.png: labeled frame shows no object"):
        apply_budget(seqs, {"ten": ["00004.jpg"]})


def test_budget_command(ten, tmp_path: Path, capsys) -> None:
    data, seqs = ten
    out = tmp_path / "b" / "budget.json"
    status = main(
        [
            "budget",
            "--data",
            str(data.root),
            "--shots",
            "2",
            "--strategy",
            "uniform",
            "--seed",
            "0",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    assert load_budget(out) == {"six": ["00001.jpg", "00004.jpg"], "ten": ["00002.jpg", "00007.jpg"]}
    text = capsys.readouterr().out
    assert "videos: 2" in text and "labeled frames: 4" in text
    assert "share of frames labeled: 25.0% of 16 frames" in text
    status = main(["budget", "--data", str(tmp_path / "nothing"), "--dataset", "davis", "--out", str(out)])
    assert status == 2 and "nothing: no such folder" in capsys.readouterr().err
