"""Device selection shared by training, inference and the command line."""

from __future__ import annotations

import contextlib

import torch

from twoshot.errors import UserError


def resolve_device(name: str | torch.device) -> torch.device:
    """Map 'auto' | 'cpu' | 'cuda' | 'cuda:N' (or a torch.device) to a torch.device.

    'auto' picks CUDA when available. Raises UserError for CUDA on a machine without it or
    for a name torch does not know.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"device {name!r}: not a device name (auto, cpu, cuda, cuda:N)") from exc


AMP_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype(name: str, key: str = "inference.amp_dtype") -> torch.dtype:
    """The torch dtype of an AMP setting ``name`` (float16 | bfloat16); UserError naming ``key``."""
    if name not in AMP_DTYPES:
        raise UserError(f"config key '{key}': {name!r} is not one of {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[name]


def inference_autocast(
    amp: bool, dtype: torch.dtype, device: torch.device
) -> contextlib.AbstractContextManager[object]:
    """Autocast to ``dtype`` on CUDA when ``amp``; on a CPU when ``amp`` and ``dtype`` is
    bfloat16 (convolutions and matrix products in bfloat16, fast where the CPU has AVX-512
    BF16 or AMX, :func:`cpu_bf16_flags`); a no-op otherwise (CPU float16 runs fp32)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    if amp and device.type == "cpu" and dtype == torch.bfloat16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# The /proc/cpuinfo flags that decide how fast CPU inference can be: AVX2 and AVX-512 for
# fp32, AVX-512 BF16 and AMX for native bfloat16 arithmetic (without them oneDNN emulates
# bfloat16 and it is slower than fp32).
CPU_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
NATIVE_BF16_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The flags of :data:`CPU_FLAGS` this CPU has (from ``cpuinfo``, the text of
    /proc/cpuinfo, read when None; empty where it cannot be read, as on macOS or Windows)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as handle:
                cpuinfo = handle.read()
        except OSError:
            return []
    present: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present.update(line.split(":", 1)[1].split())
    return [flag for flag in CPU_FLAGS if flag in present]


def cpu_bf16_flags(flags: list[str] | None = None) -> list[str]:
    """Of ``flags`` (this CPU's :func:`cpu_flags` when None), those that give native bfloat16."""
    return [f for f in (cpu_flags() if flags is None else flags) if f in NATIVE_BF16_FLAGS]
