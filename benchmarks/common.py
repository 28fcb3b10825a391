"""Helpers shared by the benchmark scripts: the machine, timing, interleaved A/B runs, memory.

The scripts in ``benchmarks/`` import this as ``from common import ...``: Python puts a
script's folder first on ``sys.path``, so ``python benchmarks/<name>.py`` finds it, and so
does ``benchmarks/run.py`` when it imports the other scripts.

On a shared machine the load changes from second to second, so comparisons are measured
*interleaved*: every variant once per round, the order reversed every other round (A B, B A,
A B ...), and the median per variant (and of the per-round ratios) reported.

torch is imported only inside the functions that need it: a benchmark that starts worker
processes with ``spawn`` re-imports its main script in every worker, and importing torch
there would add seconds to each worker's start.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What the figures were measured on: CPU model, count and speed-relevant flags (avx2,
    avx512f, avx512_bf16, amx_bf16), OS, Python, torch and its intra-op threads, the device
    (GPU name on CUDA) and the load average now."""
    import torch

    from twoshot.devices import cpu_flags

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(torch.device(device)) if cuda else "cpu",
        "load_average_1min": load_average(),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line for a table's caption: CPU, its flags, threads, device, load (from :func:`machine_info`)."""
    flags = ", ".join(info.get("cpu_flags") or []) or "none of avx2/avx512f/avx512_bf16/amx_bf16"
    return (
        f"CPU: {info['processor']} ({info['cpu_count']} cores; flags: {flags}); torch {info['torch']} "
        f"with {info['torch_threads']} threads; device {info['device']}; "
        f"1-minute load {info['load_average_1min']}"
    )


def synchronize(device: str | torch.device | None) -> None:
    """Wait for queued CUDA work (timings on a GPU are otherwise only launch times)."""
    if device is None or "cuda" not in str(device):
        return
    import torch

    torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable[[], Any], device: str | torch.device | None = None) -> tuple[Any, float]:
    """Run ``fn`` once: (its value, wall seconds), CUDA synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return value, time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + usage.ru_utime + usage.ru_stime


@dataclass
class Interleaved:
    """Wall seconds of each variant per round (``seconds[name][round]``), the CPU seconds of
    the same runs (this process and finished child processes), and each variant's last value."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def median(self, name: str) -> float:
        """Median wall seconds of a variant."""
        return statistics.median(self.seconds[name])

    def best(self, name: str) -> float:
        """Fastest round of a variant."""
        return min(self.seconds[name])

    def best_cpu(self, name: str) -> float:
        """CPU seconds of a variant's fastest round."""
        times = self.seconds[name]
        return self.cpu[name][times.index(min(times))]

    def ratio(self, slow: str, fast: str) -> float:
        """Median over rounds of ``slow / fast`` (each round's two runs saw a similar load)."""
        return statistics.median(s / f for s, f in zip(self.seconds[slow], self.seconds[fast]))


def interleave(
    variants: Mapping[str, Callable[[], Any]],
    rounds: int,
    device: str | torch.device | None = None,
    after: Callable[[str, Any], None] | None = None,
) -> Interleaved:
    """Time every variant once per round, alternating the order (A B, B A, ...).

    variants: name -> zero-argument callable; rounds: how many times each runs;
    after: called with (name, value) after each run (e.g. to check a result).
    Returns an :class:`Interleaved` with per-round seconds.
    """
    out = Interleaved({name: [] for name in variants}, {name: [] for name in variants})
    names = list(variants)
    for index in range(max(1, rounds)):
        for name in names if index % 2 == 0 else names[::-1]:
            start_cpu = cpu_seconds()
            value, seconds = timed(variants[name], device)
            out.seconds[name].append(seconds)
            out.cpu[name].append(cpu_seconds() - start_cpu)
            out.values[name] = value
            if after is not None:
                after(name, value)
    return out


def _status_kib(field_name: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (Linux), None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb() -> float | None:
    """Resident set size of this process now, in MiB (VmRSS; None off Linux)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB: VmHWM on Linux (reset by
    :func:`reset_peak_rss`), else ``ru_maxrss`` (since the start; KiB on Linux, bytes on macOS)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where that is not possible,
    in which case :func:`peak_rss_mb` stays a high-water mark over the whole process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table of ``rows`` under ``header``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def print_report(text: str, report: Mapping[str, Any], json_path: str | None) -> None:
    """Print a benchmark's table; also write ``report`` as JSON to ``json_path`` if given."""
    print(text)
    if json_path:
        from twoshot.fsutil import write_json

        write_json(json_path, report)
        print(f"wrote {json_path}")
