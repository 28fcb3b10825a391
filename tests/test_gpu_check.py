"""benchmarks/gpu_check.py: its CPU flavour end to end, and what it refuses before any work."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from helpers import BENCHMARKS, load_benchmark

SCRIPT = BENCHMARKS / "gpu_check.py"


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return load_benchmark("gpu_check")


@pytest.mark.slow
def test_cpu_quick_run_reports_every_section(tmp_path: Path) -> None:
    report_path = tmp_path / "gpu.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--quick",
            "--json",
            str(report_path),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["machine"]["device"] == "cpu"
    sections = report["sections"]
    assert {name: s["status"] for name, s in sections.items()} == {
        "tests": "ok",
        "inference": "ok",
        "train": "ok",
        "sam2": "ok",
        "twoshot": "ok",
    }
    # Without a GPU the CUDA tests are collected and skipped, not left out.
    cases = sections["tests"]["details"]["cases"]
    assert len(cases) >= 7 and {c["outcome"] for c in cases} == {"skipped"}
    speed = sections["inference"]["details"]["results"]
    assert set(speed) == {"tiny, fp32, eager", "stcn, fp32, eager", "cutie-tiny, fp32, eager"}
    assert all(r["frames_per_second"] > 0 and r["peak_cuda_mib"] is None for r in speed.values())
    # The smoke run does the least that proves each section: no profiles on a CPU unless asked.
    assert "profile" not in sections["inference"]["details"]
    assert "profile" not in sections["train"]["details"]
    train = sections["train"]["details"]
    assert train["loader_clips_per_s"] > 0 and train["trainer_it_per_s"] > 0
    sam2 = sections["sam2"]["details"]["results"]
    assert (
        set(sam2) == {"fp32", "bf16", "bf16, offload"} and sections["sam2"]["details"]["preset"] == "sam2-toy"
    )
    # The masks are not empty, and offloading changes where the memories live, not their values.
    assert sam2["bf16"]["foreground"] > 0 and sam2["bf16, offload"]["pixels_equal"] == 1.0
    assert 0.0 <= sam2["bf16"]["pixels_equal"] <= 1.0 and sam2["bf16"]["pixels_equal_to"] == "fp32"
    scores = sections["twoshot"]["details"]["scores"]
    assert set(scores) >= {"phase2", "naive", "full"}
    assert all(0.0 <= value <= 100.0 for value in scores.values())
    # The table printed last holds every row of every section.
    rows = [row for s in sections.values() for row in s["rows"]]
    assert done.stdout.rstrip().endswith(f"wrote {report_path}")
    assert report["table"] in done.stdout and len(report["table"].splitlines()) == len(rows) + 2


def test_profile_call_reports_the_operators_of_the_call(
    check: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the check imports its sibling common.py
    a = torch.randn(64, 64)
    profile = check.profile_call(lambda: [a @ a for _ in range(3)], cuda=False)
    assert profile["device_busy_share"] is None
    assert "aten::mm" in {op["name"] for op in profile["top_cpu"]}
    assert "aten::mm" in profile["table"]
    row = check.profile_row("inference", "profile, toy", profile)
    assert row[:2] == ["inference", "profile, toy"] and "top CPU operators: " in row[2]


def test_missing_packages_stop_the_check_before_any_work(
    check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        check.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("skimage", "av") else real(name, *a),
    )
    work = tmp_path / "work"
    assert check.main(["--device", "cpu", "--only", "twoshot", "--work", str(work)]) == 2
    err = capsys.readouterr().err
    assert "scikit-image (import skimage): textures of the generated videos; needed by: twoshot" in err
    assert "av" not in err.split("needed by")[0].split("missing:")[1]  # optional: not asked for
    assert not work.exists()
    # The sections that do not need it are not stopped by it.
    needed, optional = check.missing_requirements(["inference"])
    assert needed == [] and {r.module for r in optional} == {"skimage", "av"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_refused(
    check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    assert check.main(["--device", "cuda", "--work", str(work)]) == 2
    assert "--device cuda but this torch" in capsys.readouterr().err
    assert not work.exists()


def test_junit_cases_reads_outcomes_and_first_message_lines(check: ModuleType, tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_cuda" name="test_b" time="0.25">'
        '<failure message="assert 0.9 &gt;= 0.995&#10;more">trace</failure></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c" time="0">'
        '<skipped message="needs a CUDA GPU"/></testcase>'
        '<testcase classname="tests.test_cuda" name="test_d" time="2">'
        '<error message="">fixture broke\nline 2</error></testcase>'
        "</testsuite></testsuites>"
    )
    assert check.junit_cases(xml) == [
        {"name": "test_a", "outcome": "passed", "seconds": 1.5, "message": ""},
        {"name": "test_b", "outcome": "failed", "seconds": 0.25, "message": "assert 0.9 >= 0.995"},
        {"name": "test_c", "outcome": "skipped", "seconds": 0.0, "message": "needs a CUDA GPU"},
        {"name": "test_d", "outcome": "error", "seconds": 2.0, "message": "fixture broke"},
    ]
