"""The annotation app's HTTP interface (Starlette): the page, and JSON / binary endpoints.

Masks travel as raw bytes, one uint8 object id per pixel in row order (H x W bytes), which
the page reads and writes with typed arrays and no decoding. Every request names a video by
its name and a frame by its index, never a path; the paths behind them are checked to
resolve inside the dataset. Request bodies are capped (:data:`MAX_BODY`); a refused request
gets a 4xx and a ``{"error": message}`` body and writes nothing. Requests from other web
pages are refused before they reach a handler (:mod:`twoshot.annotate.security`).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from twoshot.annotate.clicks import ClickSegmenter, unavailable_reason
from twoshot.annotate.export import export_dataset
from twoshot.annotate.jobs import PropagationJobs
from twoshot.annotate.security import TOKEN_HEADER, LocalOnly
from twoshot.annotate.storage import AnnotationStore, RequestError
from twoshot.data.budget import MODEL_STRATEGIES, STRATEGIES
from twoshot.errors import UserError

STATIC = Path(__file__).parent / "static"
# The largest mask is one byte per pixel: 64 MiB covers 8K frames; JSON bodies are small.
MAX_BODY = 64 * 1024 * 1024
MAX_JSON = 64 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    store: AnnotationStore,
    jobs: PropagationJobs | None = None,
    export_dir: str | Path | None = None,
    hosts: Sequence[str] = (),
) -> Starlette:
    """The Starlette application serving ``store``; ``jobs`` enables propagation (a checkpoint
    was given); exports go to ``export_dir`` (default: ``export`` beside the budget JSON);
    hosts: host names besides the served address that requests may name (``--host``).
    ``app.state.token`` is the session token that the page holds and that scripts sending
    no ``Origin`` header must send (header :data:`~twoshot.annotate.security.TOKEN_HEADER`)."""
    export_to = (
        Path(export_dir) if export_dir is not None else store.budget_path.parent / "export"
    ).absolute()
    token = secrets.token_urlsafe(24)
    model = jobs.engine.model if jobs is not None else None
    no_clicks = unavailable_reason(model)
    clicks = None
    if jobs is not None and no_clicks is None:
        clicks = ClickSegmenter(store, jobs.engine.model, jobs.engine.config, jobs.engine.device)
    page = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{token}}", token)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html", headers={"Cache-Control": "no-store"})

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "data": str(store.data),
                "layout": store.layout,
                "budget": str(store.budget_path),
                "export": str(export_to),
                "propagation": jobs is not None,
                "max_objects": store.max_objects,
                # Model strategies need the checkpoint's engine.
                "strategies": list(STRATEGIES) + (list(MODEL_STRATEGIES) if jobs is not None else []),
                # Click-to-segment needs SAM 2; the page says why it is missing otherwise.
                "clicks": clicks is not None,
                "clicks_unavailable": no_clicks,
            }
        )

    async def videos(request: Request) -> Response:
        return JSONResponse({"videos": [store.summary(name) for name in store.videos]})

    async def video(request: Request) -> Response:
        details = await run_in_threadpool(store.details, request.path_params["video"])
        return JSONResponse(details)

    async def image(request: Request) -> Response:
        name, index = _frame(request)
        path = store.frame_file(name, index)
        if path is not None:
            return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
        data = await run_in_threadpool(store.frame_jpeg, name, index)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def thumb(request: Request) -> Response:
        name, index = _frame(request)
        if request.query_params.get("masks") != "1":
            data = await run_in_threadpool(store.thumbnail, name, index)
            return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
        # The frame's saved mask when it is labeled, else its propagated one (if any).
        labels = None
        if index in store.labeled[name]:
            labels = (await run_in_threadpool(store.read_mask, name, index))[0]
        elif jobs is not None and (job := jobs.get(name)) is not None and index in job.results:
            labels = job.results[index][0]
        data = await run_in_threadpool(store.thumbnail, name, index, labels)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def get_mask(request: Request) -> Response:
        name, index = _frame(request)
        labels, version = await run_in_threadpool(store.read_mask, name, index)
        return _raw(labels, version)

    async def put_mask(request: Request) -> Response:
        name, index = _frame(request)
        height, width = store.frame_size(name)
        body = await _body(request, MAX_BODY)
        if len(body) != height * width:
            raise RequestError(
                400,
                f"a mask of {name} is {height}x{width} = {height * width} bytes "
                f"(one object id per pixel), got {len(body)}",
            )
        labels = np.frombuffer(body, np.uint8).reshape(height, width).copy()
        base = request.query_params.get("base")
        result = await run_in_threadpool(store.save_mask, name, index, labels, base)
        return JSONResponse(result)

    async def grabcut(request: Request) -> Response:
        name, index = _frame(request)
        payload = await _json(request)
        box = _pixels(payload, "box", 2, store.frame_size(name))
        rgb = await run_in_threadpool(store.frame_rgb, name, index)
        fg = await run_in_threadpool(grabcut_box, rgb, [int(round(v)) for v in box])
        return _raw(fg, "")

    async def segment(request: Request) -> Response:
        name, index = _frame(request)
        payload = await _json(request)
        if clicks is None:
            raise RequestError(400, str(no_clicks))
        fg, timing = await run_in_threadpool(clicks.segment, name, index, payload)
        response = _raw(fg, "")
        response.headers["X-Encoded"] = "1" if timing["encoded"] else "0"
        response.headers["X-Seconds"] = f"{timing['seconds']:.4f}"
        return response

    async def put_object(request: Request) -> Response:
        name = request.path_params["video"]
        payload = await _json(request)
        result = await run_in_threadpool(
            store.set_object,
            name,
            _int(request.path_params["obj"], "object id"),
            str(payload.get("name", "")),
            str(payload.get("color", "")),
        )
        return JSONResponse(result)

    async def delete_object(request: Request) -> Response:
        name = request.path_params["video"]
        result = await run_in_threadpool(
            store.delete_object, name, _int(request.path_params["obj"], "object id")
        )
        return JSONResponse(result)

    async def suggest(request: Request) -> Response:
        name = request.path_params["video"]
        shots = _int(request.query_params.get("k", "2"), "k")
        strategy = request.query_params.get("strategy", "uniform")
        seed = _int(request.query_params.get("seed", "0"), "seed")
        if strategy in MODEL_STRATEGIES:
            if jobs is None:
                raise RequestError(
                    409,
                    f"no checkpoint loaded: {strategy} suggestions need twoshot annotate --checkpoint",
                )
            frames = await run_in_threadpool(jobs.suggest, name, shots, strategy)
        else:
            frames = await run_in_threadpool(store.suggest, name, shots, strategy, seed)
        await run_in_threadpool(store.remember_suggestions, name, strategy, shots, frames)
        return JSONResponse({"frames": frames})

    async def propagate(request: Request) -> Response:
        name = request.path_params["video"]
        if jobs is None:
            raise RequestError(
                409, "no checkpoint loaded: start twoshot annotate with --checkpoint to propagate"
            )
        payload = await _json(request)
        origin = payload.get("from")
        if origin is not None and (not isinstance(origin, int) or isinstance(origin, bool)):
            raise RequestError(400, f'"from": expected a frame index, got {origin!r}')
        if origin is not None:
            store.check_frame(name, origin)
        direction = str(payload.get("direction", "forward"))
        await run_in_threadpool(lambda: jobs.start(name, origin=origin, direction=direction))
        return JSONResponse(jobs.status(name), status_code=202)

    async def propagation(request: Request) -> Response:
        name = request.path_params["video"]
        if jobs is None:
            store.video(name)
            return JSONResponse({"state": "unavailable", "done": 0, "total": 0, "ready": []})
        return JSONResponse(jobs.status(name))

    async def propagated(request: Request) -> Response:
        name, index = _frame(request)
        if jobs is None:
            raise RequestError(404, "no checkpoint loaded: nothing is propagated")
        labels, confidence = jobs.frame(name, index)
        return Response(
            labels.tobytes() + confidence.tobytes(),
            media_type="application/octet-stream",
            headers={"X-Height": str(labels.shape[0]), "X-Width": str(labels.shape[1])},
        )

    async def export(request: Request) -> Response:
        payload = await _json(request)
        val = payload.get("val")
        if val is not None and not (isinstance(val, list) and all(isinstance(v, str) for v in val)):
            raise RequestError(400, 'expected {"val": [video names]} (the videos to hold out)')
        result = await run_in_threadpool(
            export_dataset, store, jobs, export_to, videos=bool(payload.get("videos", True)), val=val
        )
        return JSONResponse(result)

    video_path = "/api/videos/{video:str}"
    frame_path = video_path + "/frames/{index:str}"
    routes = [
        Route("/", _guard(index)),
        Route("/api/info", _guard(info)),
        Route("/api/videos", _guard(videos)),
        Route(video_path, _guard(video)),
        Route(frame_path + "/image", _guard(image)),
        Route(frame_path + "/thumb", _guard(thumb)),
        Route(frame_path + "/mask", _guard(get_mask), methods=["GET"]),
        Route(frame_path + "/mask", _guard(put_mask), methods=["PUT"]),
        Route(frame_path + "/grabcut", _guard(grabcut), methods=["POST"]),
        Route(frame_path + "/segment", _guard(segment), methods=["POST"]),
        Route(frame_path + "/propagated", _guard(propagated)),
        Route(video_path + "/objects/{obj:str}", _guard(put_object), methods=["PUT"]),
        Route(video_path + "/objects/{obj:str}", _guard(delete_object), methods=["DELETE"]),
        Route(video_path + "/suggest", _guard(suggest)),
        Route(video_path + "/propagate", _guard(propagate), methods=["POST"]),
        Route(video_path + "/propagation", _guard(propagation)),
        Route("/api/export", _guard(export), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        middleware=[Middleware(LocalOnly, token=token, names=hosts)],
    )
    app.state.store, app.state.jobs, app.state.export_dir = store, jobs, export_to
    app.state.clicks = clicks
    app.state.token, app.state.token_header = token, TOKEN_HEADER
    return app


def grabcut_box(rgb: np.ndarray, box: list[int], iterations: int = 5) -> np.ndarray:
    """Foreground of OpenCV's GrabCut initialised with a rectangle.

    rgb: uint8 [H, W, 3]; box: [x0, y0, x1, y1] in pixels (any corner order, clipped to the
    frame). Returns uint8 [H, W], 1 = foreground. RequestError 400 for a box under 2x2 pixels.
    """
    import cv2

    height, width = rgb.shape[:2]
    x0, x1 = sorted((max(0, min(width, box[0])), max(0, min(width, box[2]))))
    y0, y1 = sorted((max(0, min(height, box[1])), max(0, min(height, box[3]))))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise RequestError(400, f"box {box} covers less than 2x2 pixels of the {width}x{height} frame")
    mask = np.zeros((height, width), np.uint8)
    background = np.zeros((1, 65), np.float64)
    foreground = np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    if x1 - x0 >= width - 1 and y1 - y0 >= height - 1:
        return np.ones((height, width), np.uint8)  # GrabCut needs some background outside the box
    cv2.grabCut(
        bgr, mask, (x0, y0, x1 - x0, y1 - y0), background, foreground, iterations, cv2.GC_INIT_WITH_RECT
    )
    return ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)


def _guard(handler: Handler) -> Handler:
    """Turn RequestError and UserError into a 4xx JSON answer instead of a server error."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)

    return guarded


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in the app's JSON form."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "server error"
    return JSONResponse({"error": f"{detail}: {request.method} {request.url.path}"}, status_code=status)


def _frame(request: Request) -> tuple[str, int]:
    """(video name, frame index) of a frame route, both checked (404 otherwise)."""
    name = request.path_params["video"]
    index = _int(request.path_params["index"], "frame index", status=404)
    request.app.state.store.check_frame(name, index)
    return name, index


def _pixels(payload: dict[str, Any], key: str, points: int, size: tuple[int, int]) -> list[float]:
    """``payload[key]``: ``points`` (x, y) pairs, flat, in pixels of a frame of ``size`` (H, W),
    each finite and inside the frame (0..W, 0..H: a box may end on the far edge).
    RequestError 400 otherwise, saying what was expected."""
    height, width = size
    values = payload.get(key)
    shape = ", ".join(f"x{i}, y{i}" for i in range(points))
    if not (
        isinstance(values, list)
        and len(values) == 2 * points
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
        raise RequestError(400, f'expected {{"{key}": [{shape}]}} in image pixels, got {values!r}')
    if not all(math.isfinite(v) for v in values):
        raise RequestError(400, f"{key} {values}: coordinates must be finite numbers")
    for x, y in zip(values[::2], values[1::2], strict=True):
        if not (0 <= x <= width and 0 <= y <= height):
            raise RequestError(400, f"{key} {values}: ({x}, {y}) is outside the {width}x{height} frame")
    return values


def _int(text: str, what: str, status: int = 400) -> int:
    try:
        return int(text)
    except ValueError:
        raise RequestError(status, f"{what} {text!r} is not an integer") from None


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (checked while it streams in)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request: Request) -> dict[str, Any]:
    """The request's JSON object body (an empty body is ``{}``); 400 if malformed."""
    body = await _body(request, MAX_JSON)
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"malformed JSON body ({exc})") from exc
    if not isinstance(payload, dict):
        raise RequestError(400, "expected a JSON object body")
    return payload


def _raw(labels: np.ndarray, version: str) -> Response:
    """A mask as raw bytes with its size and version in headers."""
    return Response(
        np.ascontiguousarray(labels, np.uint8).tobytes(),
        media_type="application/octet-stream",
        headers={
            "X-Height": str(labels.shape[0]),
            "X-Width": str(labels.shape[1]),
            "X-Mask-Version": version,
            "Cache-Control": "no-store",
        },
    )
