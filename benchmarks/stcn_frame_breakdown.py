"""Where one STCN frame's time goes: the reference's calls, twoshot's exact path, its default.

In-process timings of the parts of segmenting one 480x640 frame with K objects and random
weights, interleaved over rounds (medians), for three ways of doing the same work:

- ``reference``: as STCN's YouTube-VOS/generic inference core calls the network: the decoder
  once per object (so its skip convolutions run once per object too), all objects' values
  in one value-encoder call;
- ``exact``: twoshot's bit-identical path: the decoder once per frame for all objects, its
  skip convolutions once per frame;
- ``default``: twoshot's default: the fast inference copy (folded BatchNorm, key halves of
  the decoder's and the fuser's first blocks once per frame) in channels-last layout.

Parts: ``encode_key`` (ResNet-50 to layer3, key projection), ``decode`` (K objects),
``encode_value`` (K objects; once per memory frame), ``read`` (top-k memory read, 3 memory
frames; the same code in all three). The sum per frame with memory every 5 frames is
``encode_key + read + decode + encode_value / 5``.

    python benchmarks/stcn_frame_breakdown.py [--objects 3] [--rounds 3] [--json PATH]

``run(...) -> dict`` returns the figures.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable
from typing import Any

import torch

from common import machine_info, markdown_table, print_report, timed
from twoshot.config import load_config
from twoshot.model import STCN, build_model
from twoshot.model.stcn.memory_store import MemoryStore

PARTS = ("encode_key", "decode", "encode_value", "read")
WAYS = ("reference", "exact", "default")


def _parts(model: STCN, way: str, objects: int, size: tuple[int, int]) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables for each part, done the way ``way`` does it."""
    layout = torch.channels_last if way == "default" else torch.contiguous_format
    net = model.fast_copy().to(memory_format=layout) if way == "default" else model
    images = torch.randn(1, 3, *size).contiguous(memory_format=layout)
    masks = torch.rand(1, objects, *size)
    with torch.inference_mode():
        query = net.encode_key(images)
        store = MemoryStore()
        store.add_objects(objects)
        values = net.encode_value(images, query.f16, masks)
        for _ in range(3):
            store.add(query.key[0], values[0])
        readout = store.read(query.key, 20)

    def decode() -> Any:
        if way == "reference":
            return [net.decode(readout[:, k : k + 1], query) for k in range(objects)]
        return net.decode(readout, query)

    return {
        "encode_key": lambda: net.encode_key(images),
        "decode": decode,
        "encode_value": lambda: net.encode_value(images, query.f16, masks),
        "read": lambda: store.read(query.key, 20),
    }


def run(objects: int = 3, size: tuple[int, int] = (480, 640), rounds: int = 3) -> dict[str, Any]:
    """Median seconds of each part for each way, and the per-frame totals and speed-ups."""
    torch.manual_seed(0)
    base = build_model(load_config(preset="stcn").model).eval()
    assert isinstance(base, STCN)
    # channels-last converts the weights in place: each way gets its own copy.
    parts = {way: _parts(copy.deepcopy(base), way, objects, size) for way in WAYS}
    seconds: dict[str, dict[str, list[float]]] = {w: {p: [] for p in PARTS} for w in WAYS}
    with torch.inference_mode():
        for index in range(rounds):
            for way in WAYS if index % 2 == 0 else WAYS[::-1]:
                for part in PARTS:
                    seconds[way][part].append(timed(parts[way][part])[1])
    medians = {w: {p: round(statistics.median(v), 3) for p, v in seconds[w].items()} for w in WAYS}
    per_frame = {
        w: round(m["encode_key"] + m["read"] + m["decode"] + m["encode_value"] / 5, 3)
        for w, m in medians.items()
    }
    return {
        "machine": machine_info("cpu"),
        "objects": objects,
        "size": list(size),
        "seconds": medians,
        "per_frame": per_frame,
        "speedup_over_reference": {w: round(per_frame["reference"] / per_frame[w], 2) for w in WAYS},
    }


def format_report(report: dict[str, Any]) -> str:
    """The parts as a Markdown table."""
    rows = [[part] + [f"{report['seconds'][w][part]:.3f}" for w in WAYS] for part in PARTS]
    rows.append(["per frame (memory every 5)"] + [f"**{report['per_frame'][w]:.3f}**" for w in WAYS])
    rows.append(["speed-up over reference"] + [f"{report['speedup_over_reference'][w]}x" for w in WAYS])
    header = [f"part, {report['objects']} objects, {report['size'][0]}x{report['size'][1]} (s)", *WAYS]
    return markdown_table(header, rows)


def main() -> None:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    report = run(args.objects, tuple(args.size), args.rounds)
    print_report(format_report(report), report, args.json)


if __name__ == "__main__":
    main()
