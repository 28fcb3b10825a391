"""twoshot annotate's responsiveness: propagation as the page sees it, and frame switching.

A generated 100-frame 854x480 video (DAVIS layout, JPEG frames) is served by the real app
(uvicorn on a local port, a random-weight model of the chosen preset); two frames are
labeled through the HTTP API, then "propagate" is pressed and the script polls the job as
the page does. It reports:

- the time from the request to the first propagated frame fetched (what the page shows
  first) and to the whole video done;
- frame-switch latency (one frame's image + mask + propagated overlay, as the page loads
  them) while the job runs and once it is done.

    python benchmarks/annotate_speed.py                 # tiny, 100 frames, CPU
    python benchmarks/annotate_speed.py --device cuda --frames 100

With ``--clicks`` (a SAM 2 preset, e.g. ``--preset sam2-toy`` or ``sam2.1-tiny``) it times
click-to-segment instead: on each of ``--click-frames`` frames of the same kind of video, a
first click (the frame's image features computed, then one decoder step) and
``--clicks-per-frame`` - 1 further clicks (the features cached: one decoder step each),
each a ``POST .../segment`` as the page sends it, timed from request to answer.

    python benchmarks/annotate_speed.py --clicks --preset sam2-toy

``run(...) -> dict`` does the same for a benchmark runner.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common import machine_info
from twoshot.annotate.jobs import PropagationJobs
from twoshot.annotate.security import TOKEN_HEADER
from twoshot.annotate.server import create_app
from twoshot.annotate.storage import AnnotationStore
from twoshot.config import load_config
from twoshot.data.fixtures import make_davis
from twoshot.model import build_model


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def _request(url: str, method: str, token: str, body: bytes = b"") -> bytes:
    # A script sends no Origin header: the app wants its session token instead.
    request = urllib.request.Request(url, data=body, method=method, headers={TOKEN_HEADER: token})
    with urllib.request.urlopen(request) as response:
        return response.read()


def _switch(base: str, frame: int, propagated: bool) -> float:
    """Seconds to load one frame the way the page does (image, mask, overlay if ready)."""
    start = time.perf_counter()
    _get(f"{base}/frames/{frame}/image")
    _get(f"{base}/frames/{frame}/mask")
    if propagated:
        _get(f"{base}/frames/{frame}/propagated")
    return time.perf_counter() - start


@contextlib.contextmanager
def _serving(jobs: PropagationJobs) -> Iterator[tuple[Any, str]]:
    """The annotate app over ``jobs`` on a free localhost port, in a thread, for the block:
    (the app, the URL of its video ``clip``); stopped afterwards."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    app = create_app(jobs.store, jobs)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield app, f"http://127.0.0.1:{sock.getsockname()[1]}/api/videos/clip"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def run(
    preset: str = "tiny", frames: int = 100, device: str = "cpu", size: tuple[int, int] = (480, 854)
) -> dict:
    """Time propagation and frame switching on a generated video; returns the figures."""
    import dataclasses

    import torch

    torch.manual_seed(0)
    config = load_config(preset)
    model = build_model(config.model)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        data = make_davis(Path(tmp) / "davis", {"clip": frames}, size=size, annotate=[])
        jobs = PropagationJobs(
            AnnotationStore(data.root), model, dataclasses.replace(config.inference, device=device)
        )
        app, base = stack.enter_context(_serving(jobs))
        labeled = [0, frames - 1]
        for obj in sorted({int(v) for index in labeled for v in np.unique(data.labels["clip"][index])} - {0}):
            _request(f"{base}/objects/{obj}", "PUT", app.state.token, b'{"color": "#800000"}')
        for index in labeled:
            _request(
                f"{base}/frames/{index}/mask?base=",
                "PUT",
                app.state.token,
                data.labels["clip"][index].tobytes(),
            )
        idle = [_switch(base, f % frames, False) for f in range(5, 25)]

        start = time.perf_counter()
        _request(f"{base}/propagate", "POST", app.state.token)
        first_shown = None
        busy: list[float] = []
        probe = 1
        while True:
            status = json.loads(_get(f"{base}/propagation"))
            ready = [f for f in status["ready"] if f not in labeled]
            if first_shown is None and ready:
                _get(f"{base}/frames/{ready[0]}/propagated")
                first_shown = time.perf_counter() - start
            if status["state"] in ("done", "failed", "cancelled"):
                break
            # A user stepping through frames while the job runs.
            busy.append(_switch(base, probe, probe in status["ready"]))
            probe = probe % (frames - 2) + 1
            time.sleep(0.05)
        total = time.perf_counter() - start
        after = [_switch(base, f % frames, True) for f in range(5, 25)]
    if status["state"] != "done":
        raise RuntimeError(f"propagation ended {status['state']}: {status.get('error')}")

    def ms(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "preset": preset,
        "frames": frames,
        "size": f"{size[1]}x{size[0]}",
        "device": device,
        "inference_size": config.inference.size,
        "first_frame_shown_s": round(first_shown or float("nan"), 2),
        "whole_video_s": round(total, 2),
        "frames_per_s": round(frames / total, 2),
        "switch_ms_idle_median": round(1000 * statistics.median(idle), 1),
        "switch_ms_during_job_median": round(1000 * statistics.median(busy), 1) if busy else None,
        "switch_ms_during_job_p90": ms(busy, 0.9) if busy else None,
        "switch_ms_during_job_samples": len(busy),
        "switch_ms_after_median": round(1000 * statistics.median(after), 1),
        "machine": machine_info(device),
    }


def run_clicks(
    preset: str = "sam2-toy",
    device: str = "cpu",
    size: tuple[int, int] = (480, 854),
    click_frames: int = 3,
    clicks_per_frame: int = 4,
) -> dict:
    """Time click-to-segment requests (first click on a frame, further clicks) with a
    random-weight SAM 2 preset; returns the figures."""
    import dataclasses

    import torch

    torch.manual_seed(0)
    config = load_config(preset)
    model = build_model(config.model)
    load_before = machine_info(device)["load_average_1min"]
    first: list[float] = []
    further: list[float] = []
    server_first: list[float] = []
    server_further: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        data = make_davis(Path(tmp) / "davis", {"clip": click_frames}, size=size, annotate=[])
        jobs = PropagationJobs(
            AnnotationStore(data.root), model, dataclasses.replace(config.inference, device=device)
        )
        app, base = stack.enter_context(_serving(jobs))
        _request(f"{base}/objects/1", "PUT", app.state.token, b'{"color": "#800000"}')
        rng = np.random.default_rng(0)
        height, width = size
        for frame in range(click_frames):
            points: list[list[float]] = []
            for n in range(clicks_per_frame):
                points.append([float(rng.uniform(0, width)), float(rng.uniform(0, height)), int(n % 2 == 0)])
                body = json.dumps({"object": 1, "box": None, "points": points}).encode()
                request = urllib.request.Request(
                    f"{base}/frames/{frame}/segment",
                    data=body,
                    method="POST",
                    headers={TOKEN_HEADER: app.state.token, "Content-Type": "application/json"},
                )
                start = time.perf_counter()
                with urllib.request.urlopen(request) as response:
                    response.read()
                    encoded = response.headers["X-Encoded"] == "1"
                    seconds = float(response.headers["X-Seconds"])
                elapsed = time.perf_counter() - start
                if encoded != (n == 0):
                    raise RuntimeError(f"frame {frame}, click {n + 1}: features encoded={encoded}")
                (first if n == 0 else further).append(elapsed)
                (server_first if n == 0 else server_further).append(seconds)
    return {
        "preset": preset,
        "image_size": model.image_size,
        "size": f"{size[1]}x{size[0]}",
        "device": device,
        "amp": config.inference.amp,
        "first_click_s_median": round(statistics.median(first), 3),
        "first_click_s_all": [round(v, 3) for v in first],
        "further_click_s_median": round(statistics.median(further), 3),
        "further_click_s_max": round(max(further), 3),
        "further_clicks": len(further),
        "server_first_s_median": round(statistics.median(server_first), 3),
        "server_further_s_median": round(statistics.median(server_further), 3),
        "load_average_1min_before": load_before,
        "machine": machine_info(device),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="tiny; with --clicks sam2-toy")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clicks", action="store_true", help="time click-to-segment (SAM 2 presets)")
    parser.add_argument("--click-frames", type=int, default=3)
    parser.add_argument("--clicks-per-frame", type=int, default=4)
    args = parser.parse_args(argv)
    if args.clicks:
        result = run_clicks(
            args.preset or "sam2-toy", args.device, (480, 854), args.click_frames, args.clicks_per_frame
        )
    else:
        result = run(args.preset or "tiny", args.frames, args.device)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
