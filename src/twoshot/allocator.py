"""Keep freed tensor memory in the process instead of handing it back to the OS.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block above a
(dynamic, at most 32 MiB) threshold with a fresh ``mmap`` and unmaps it when freed, so each
large activation of a network at 480p (tens of MiB) is faulted in page by page and zeroed by
the kernel again for every frame: ``twoshot infer`` with STCN spent about 10% of its CPU time
in the kernel doing that (docs/performance.md). PyTorch's own advice is to preload jemalloc
or tcmalloc, which a pip package cannot do for its users; glibc's ``mallopt`` can be set from
inside the process, so this raises the mmap and trim thresholds: large blocks then come from
the heap and are reused. The cost is a resident size that stays at its peak instead of
shrinking between frames (about 15% more for STCN at 480p).

Only on Linux with glibc, and not when the user has set the thresholds through glibc's own
environment variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``).
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process. Returns whether it did."""
    if not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        # The process's own symbols, libc's among them: ctypes.util.find_library would run
        # `ldconfig -p` in a subprocess on every command, and a process that has loaded
        # OpenVINO's runtime was seen to die of SIGSEGV while waiting on that child.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
