"""twoshot.allocator: glibc's thresholds are raised from inside the process, without a child."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from twoshot.allocator import keep_freed_memory


def test_thresholds_are_set_without_spawning_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("keep_freed_memory started a process")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc


def test_the_users_own_thresholds_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_freed_memory() is False
