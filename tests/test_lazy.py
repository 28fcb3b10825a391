"""The packages' lazy re-exports (twoshot.lazy.lazy_exports): importing a package, or building
the command line's parser, loads no torch (`twoshot --help` takes 0.5 s instead of 2.3), every
name in its ``__all__`` resolves on first use, and other names fail as usual."""

from __future__ import annotations

import subprocess
import sys

import pytest

from twoshot.lazy import lazy_exports

PACKAGES = (
    "twoshot",
    "twoshot.model",
    "twoshot.model.cutie",
    "twoshot.model.sam2",
    "twoshot.train",
    "twoshot.inference",
)

PROBE = f"""
import importlib, sys
packages = [importlib.import_module(name) for name in {PACKAGES[:-1]!r}]
import twoshot.cli
twoshot.cli.build_parser()  # every command's options: what `twoshot --help` does
print("torch" in sys.modules)
packages.append(importlib.import_module("twoshot.inference"))
missing = [f"{{p.__name__}}.{{n}}" for p in packages for n in p.__all__ if getattr(p, n, None) is None]
print(missing)
"""


def test_packages_import_without_torch_and_every_export_resolves() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["False", "[]"]


def test_lazy_exports_imports_relative_modules_and_refuses_other_names() -> None:
    getattr_ = lazy_exports("twoshot.data", {"natural_key": ".folders", "write_json": "twoshot.fsutil"})
    from twoshot.data.folders import natural_key
    from twoshot.fsutil import write_json

    assert getattr_("natural_key") is natural_key and getattr_("write_json") is write_json
    with pytest.raises(AttributeError, match="^module 'twoshot.data' has no attribute 'read_json'$"):
        getattr_("read_json")
