"""SAM 2's exported networks one by one: export and session-opening seconds, and the time of
one call in torch and in each runtime, on the same inputs (the export's examples: a random
frame, its features, a random mask, two memory frames and two object pointers).

For each part of :data:`twoshot.inference.onnx_sam2.PARTS`, on a randomly initialised model
of each size, float32, one thread by default: the export (``torch.onnx``), opening the
session, then ``--calls`` timed calls after one warm-up, torch's module and the runtime's
session part by part (torch runs the exportable module: for the memory attention
that is its real-arithmetic RoPE, bit-identical to the model's complex one). The largest
absolute difference of their outputs is printed beside the times. The CPU's flags and load are printed first.

    OMP_NUM_THREADS=1 python benchmarks/sam2_onnx_parts.py --sizes toy tiny \\
        --runtimes onnxruntime openvino --calls 3
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

import torch

from common import machine_info, machine_line, markdown_table


def main(argv: Sequence[str] | None = None) -> int:
    from twoshot.inference import onnx_sam2
    from twoshot.inference.onnx_runtime import export_sam2_part, open_session
    from twoshot.model.sam2 import SIZES, Sam2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["toy"], choices=list(SIZES))
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime"], choices=["onnxruntime", "openvino"])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the exporter's tracer warnings
    print(machine_line(machine_info("cpu")), flush=True)
    rows = []
    for size in args.sizes:
        torch.manual_seed(0)
        model = Sam2(size).eval()
        for name, (wrapper, inputs, _, _) in onnx_sam2.PARTS.items():
            examples = onnx_sam2.examples(model, name)
            module = wrapper(model)
            with torch.no_grad():
                expected = module(*examples)
                start = time.perf_counter()
                for _ in range(args.calls):
                    module(*examples)
                torch_ms = 1000 * (time.perf_counter() - start) / args.calls
            start = time.perf_counter()
            exported = export_sam2_part(model, name, examples)
            export_s = time.perf_counter() - start
            for runtime in args.runtimes:
                start = time.perf_counter()
                run = open_session(runtime, exported, args.threads)
                open_s = time.perf_counter() - start
                feeds = dict(zip(inputs, examples, strict=True))
                got = run(feeds)
                start = time.perf_counter()
                for _ in range(args.calls):
                    run(feeds)
                runtime_ms = 1000 * (time.perf_counter() - start) / args.calls
                outputs = expected if isinstance(expected, tuple) else (expected,)
                diff = max(float((a - b).abs().max()) for a, b in zip(got, outputs, strict=True))
                rows.append(
                    [
                        size,
                        name,
                        runtime,
                        round(export_s, 2),
                        round(open_s, 2),
                        round(torch_ms, 1),
                        round(runtime_ms, 1),
                        round(torch_ms / runtime_ms, 2),
                        f"{diff:.1e}",
                    ]
                )
                print(rows[-1], flush=True)
    header = ["size", "part", "runtime", "export s", "open s", "torch ms", "runtime ms", "torch / runtime"]
    print(markdown_table([*header, "max abs diff"], rows))
    print(machine_line(machine_info("cpu")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
