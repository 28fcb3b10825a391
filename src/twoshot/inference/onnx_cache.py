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

:class:`ExportedGraphs` serves, with the same interface, the graphs ``twoshot export
--format onnx`` wrote to a folder, checked against the network they stand for.
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
from twoshot.errors import UserError
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


class _Digests:
    """:func:`weights_digest` of each network asked about, computed once: one instance serves
    one engine, whose weights do not change while it runs."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[nn.Module, str]] = {}

    def of(self, network: nn.Module) -> str:
        held = self._held.get(id(network))
        if held is None or held[0] is not network:
            held = (network, weights_digest(network))
            self._held[id(network)] = held
        return held[1]


def _kind(network: nn.Module) -> str:
    return str(getattr(network, "kind", type(network).__name__))


class GraphCache:
    """ONNX graphs on disk in ``folder`` (None: no cache, every graph exported)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._digests = _Digests()

    def _identity(self, network: nn.Module) -> dict[str, object]:
        return {
            "kind": _kind(network),
            "class": f"{type(network).__module__}.{type(network).__qualname__}",
            "config": repr(getattr(network, "config", None)),
            "modules": repr(network),
            "weights": self._digests.of(network),
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
        kind = _kind(network)
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


class ExportedGraphs:
    """The graphs ``twoshot export --format onnx`` wrote to ``folder`` (``inference.onnx_graphs``,
    ``twoshot infer --onnx``), served in place of exporting: :meth:`graph` as
    :meth:`GraphCache.graph`. A graph is served only for the network it was exported from
    (the same weights digest and kind, as ``onnx.json`` records them) and for inputs of the
    shapes it was exported for; UserError naming the folder and what differs otherwise."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        manifest = folder / "onnx.json"
        try:
            self.manifest = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{manifest}: not readable as the manifest `twoshot export --format onnx` writes ({exc})"
            ) from exc
        if not isinstance(self.manifest, dict) or "weights" not in self.manifest:
            raise UserError(
                f"{manifest}: no weights digest (written by an older twoshot); export the graphs again"
            )
        self._digests = _Digests()

    def check_network(self, network: nn.Module) -> None:
        """UserError unless the graphs were exported from ``network`` (its kind and weights)."""
        manifest, kind = self.manifest, _kind(network)
        if manifest.get("model") != kind:
            raise UserError(f"{self.folder}: graphs of a {manifest.get('model')} model, not of this {kind}")
        if manifest.get("weights") != self._digests.of(network):
            hint = ""
            if manifest.get("fast_copy") is False:
                hint = " (exported with --exact; the runtimes run the fast copy: export without it)"
            raise UserError(
                f"{self.folder}: exported from other weights than this run's{hint}; "
                "export again from the same checkpoint"
            )

    def graph(
        self,
        network: nn.Module,
        part: str,
        shapes: dict[str, list[int | str]],
        opset: int,
        export: Callable[[], bytes],
    ) -> bytes:
        """The bytes of ``folder/<part>.onnx`` after checking that it is ``network``'s part
        ``part`` for ``shapes`` at ``opset``; ``export`` is never called."""
        self.check_network(network)
        entry = self.manifest.get("parts", {}).get(part)
        if entry is None or self.manifest.get("opset") != opset:
            raise UserError(f"{self.folder}: no {part} graph at opset {opset}; export the graphs again")
        if entry.get("shapes") != shapes:
            raise UserError(
                f"{self.folder / (part + '.onnx')}: exported for inputs {_shapes_text(entry.get('shapes'))}, "
                f"this run needs {_shapes_text(shapes)} (Cutie's graphs hold one padded frame size "
                "and object count: twoshot export --size H W --objects N)"
            )
        path = self.folder / f"{part}.onnx"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: {exc.strerror or exc}") from exc
        _note(f"ONNX graph {_kind(network)}/{part} read from {path}")
        return data


def _shapes_text(shapes: object) -> str:
    if not isinstance(shapes, dict):
        return repr(shapes)
    return ", ".join(f"{name} {'x'.join(str(d) for d in dims[:-1])}" for name, dims in shapes.items())


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
