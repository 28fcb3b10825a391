"""A disk cache of the ONNX graphs the runtimes export, so that a second process reuses them.

Exporting a model's per-frame networks with ``torch.onnx.export`` takes seconds (SAM 2.1
tiny: 13 s), more than a short run spends computing. :class:`GraphCache` keeps each graph
in a folder (``inference.onnx_cache`` / ``--onnx-cache``; default :func:`default_folder`)
under a key made of everything that decides it: a digest of the network's weights and
buffers, its kind, config and module structure, the part, the input shapes the export fixes
(dynamic axes by name), the twoshot version and a digest of its source files, torch's and
onnx's versions and the opset. A file is named ``<kind>-<part>-<key>.<content digest>.onnx``:
an entry whose bytes do not match its digest (a truncated or damaged file) is removed and
exported again, never loaded. Files are written atomically (:mod:`twoshot.fsutil`), so
processes sharing the folder see whole files or none.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from twoshot._version import __version__
from twoshot.fsutil import atomic_open

DISABLED = "none"
"""The ``inference.onnx_cache`` value that turns the cache off."""


def default_folder() -> Path:
    """``$TWOSHOT_CACHE/onnx``, else ``$XDG_CACHE_HOME/twoshot/onnx``, else
    ``~/.cache/twoshot/onnx``."""
    if root := os.environ.get("TWOSHOT_CACHE"):
        return Path(root).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "twoshot" / "onnx"


def cache_folder(setting: str | None) -> Path | None:
    """The folder for the ``inference.onnx_cache`` ``setting``: None -> :func:`default_folder`,
    ``"none"`` -> None (no cache), else that path."""
    if setting is None:
        return default_folder()
    if setting.strip().lower() == DISABLED:
        return None
    return Path(setting).expanduser()


@functools.cache
def _source_digest() -> str:
    """A digest of twoshot's own source files: an edited checkout exports afresh."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    try:
        import onnx

        onnx_version = str(onnx.__version__)
    except ImportError:
        onnx_version = "absent"
    return {
        "twoshot": __version__,
        "source": _source_digest(),
        "torch": torch.__version__,
        "onnx": onnx_version,
    }


def weights_digest(network: nn.Module) -> str:
    """SHA-256 of ``network``'s parameters and buffers (names, types, shapes, bytes)."""
    digest = hashlib.sha256()
    tensors = [*network.named_parameters(), *network.named_buffers()]
    for name, tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _channels_last(network: nn.Module) -> bool:
    """Whether the network's 4-d weights are stored channels-last (the layout a trace sees)."""
    return any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in network.parameters()
    )


def shapes_key(
    names: list[str], inputs: tuple[torch.Tensor, ...], dynamic_axes: dict[str, dict[int, str]] | None
) -> dict[str, list[int | str]]:
    """Each input's shape as the export fixes it: dynamic axes by their name."""
    axes = dynamic_axes or {}
    return {
        n: [axes.get(n, {}).get(i, d) for i, d in enumerate(t.shape)] + [str(t.dtype)]
        for n, t in zip(names, inputs, strict=True)
    }


class GraphCache:
    """ONNX graphs on disk in ``folder`` (None: no cache, every graph exported).

    One instance serves one engine: a network's weights digest is computed once per
    instance (the weights do not change while an engine runs).
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._digests: dict[int, tuple[nn.Module, str]] = {}

    def _identity(self, network: nn.Module) -> dict[str, object]:
        held = self._digests.get(id(network))
        if held is None or held[0] is not network:
            held = (network, weights_digest(network))
            self._digests[id(network)] = held
        return {
            "kind": getattr(network, "kind", type(network).__name__),
            "class": f"{type(network).__module__}.{type(network).__qualname__}",
            "config": repr(getattr(network, "config", None)),
            "modules": repr(network),
            "weights": held[1],
            "channels_last": _channels_last(network),
        }

    def key(self, network: nn.Module, part: str, shapes: dict[str, list[int | str]], opset: int) -> str:
        """The hex key of part ``part`` of ``network`` exported for ``shapes`` at ``opset``."""
        fields = {**self._identity(network), "part": part, "shapes": shapes, "opset": opset, **_versions()}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]

    def graph(
        self,
        network: nn.Module,
        part: str,
        shapes: dict[str, list[int | str]],
        opset: int,
        export: Callable[[], bytes],
    ) -> bytes:
        """The ONNX bytes of ``part`` of ``network``: read from the cache when a whole entry
        with this key is there, else ``export()``-ed and stored. Prints one line to stderr
        saying which."""
        if self.folder is None:
            return export()
        kind = getattr(network, "kind", type(network).__name__)
        stem = f"{kind}-{part}-{self.key(network, part, shapes, opset)}"
        for path in sorted(self.folder.glob(f"{stem}.*.onnx")):
            data = _read_whole(path)
            if data is not None:
                _note(f"ONNX graph {kind}/{part} reused from {path}")
                return data
            _note(f"ONNX graph {path} is damaged (contents do not match its digest): exporting again")
            path.unlink(missing_ok=True)
        start = time.perf_counter()
        data = export()
        path = self.folder / f"{stem}.{_content_digest(data)}.onnx"
        try:
            with atomic_open(path, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            _note(f"ONNX graph {kind}/{part} exported but not cached ({path}: {exc})")
            return data
        _note(f"ONNX graph {kind}/{part} exported in {time.perf_counter() - start:.1f} s, cached in {path}")
        return data


def _content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _read_whole(path: Path) -> bytes | None:
    """The bytes of cache file ``path`` when they match the digest in its name, else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if path.name.split(".")[-2] == _content_digest(data) else None


def _note(message: str) -> None:
    print(f"twoshot: {message}", file=sys.stderr)
