"""twoshot annotate in a real browser: the distribution's headless Chromium driven by Playwright.

One test draws brush strokes and a polygon for two objects on two frames and checks the
PNGs on disk; one propagates with a tiny random checkpoint, checks that the overlay shows,
that the exported masks equal ``twoshot pseudo-label``'s and that the model's frame
suggestions are offered and marked.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from twoshot.annotate.jobs import PropagationJobs
from twoshot.annotate.server import create_app
from twoshot.annotate.storage import AnnotationStore
from twoshot.cli import main as cli_main
from twoshot.config import load_config
from twoshot.data.budget import load_budget
from twoshot.data.fixtures import make_davis
from twoshot.data.masks import read_mask
from twoshot.inference.predictor import load_for_inference
from twoshot.model import build_model, save_weights

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")

H, W = 48, 64


@contextmanager
def serving(store: AnnotationStore, jobs: PropagationJobs | None = None) -> Iterator[str]:
    """Run the app with uvicorn in a thread on a free local port; yields its address."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(create_app(store, jobs), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_function("window.annotator && window.annotator.ready", timeout=15000)
    return page, errors


def at(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y) under the current zoom and pan."""
    point = page.evaluate(f"window.annotator.toClient({x}, {y})")
    return point["x"], point["y"]


def stroke(page, points: list[tuple[float, float]]) -> None:
    page.mouse.move(*at(page, *points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*at(page, *point), steps=4)
    page.mouse.up()


def polygon(page, points: list[tuple[float, float]]) -> None:
    page.keyboard.press("p")
    for point in points:
        page.mouse.click(*at(page, *point))
    page.keyboard.press("Enter")


def go_to_frame(page, index: int) -> None:
    page.click(f'.thumb[data-frame="{index}"]')
    page.wait_for_function(f"window.annotator.state.frame === {index}")


def test_draw_two_objects_on_two_frames_and_save(browser, tmp_path: Path) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 6}, size=(H, W), annotate=[])
    store = AnnotationStore(data.root)
    with serving(store) as url:
        page, errors = open_page(browser, url)
        page.keyboard.press("b")
        page.evaluate("window.annotator.state.brush = 6")
        stroke(page, [(8, 10), (30, 10)])  # object 1, a horizontal stroke
        page.keyboard.press("n")  # object 2
        polygon(page, [(36, 26), (60, 26), (60, 44), (36, 44)])
        go_to_frame(page, 3)
        page.keyboard.press("1")
        page.keyboard.press("b")
        stroke(page, [(10, 40), (10, 20)])  # object 1, vertical
        page.keyboard.press("2")
        polygon(page, [(40, 4), (60, 4), (50, 20)])
        # Undo the triangle, redo it: the saved PNG must hold it once more.
        page.keyboard.press("Control+z")
        page.keyboard.press("Control+y")
        page.evaluate("window.annotator.flush()")
        assert page.inner_text("#save-state") == "saved"
        assert "2 / 6" in page.inner_text('#videos li[data-name="bear"]')
        frame3, _ = read_mask(data.root / "Annotations/480p/bear/00003.png")
        # A second tab saves frame 3; the first tab's next edit there is refused, not merged.
        other, other_errors = open_page(browser, url)
        go_to_frame(other, 3)
        other.keyboard.press("e")
        stroke(other, [(10, 40), (10, 30)])
        other.evaluate("window.annotator.flush()")
        after_other = (data.root / "Annotations/480p/bear/00003.png").read_bytes()
        page.keyboard.press("b")
        stroke(page, [(30, 30), (34, 30)])
        page.evaluate("window.annotator.flush()")
        assert page.inner_text("#save-state") == "not saved"
        assert "changed elsewhere" in page.inner_text("#message")
        assert (data.root / "Annotations/480p/bear/00003.png").read_bytes() == after_other
        other.close()
        page.close()
    assert errors == [] and other_errors == []
    erased, _ = read_mask(data.root / "Annotations/480p/bear/00003.png")
    assert erased[31:40, 10].tolist() == [0] * 9 and erased[8, 50] == 2  # the second tab's erasure

    frame0, palette = read_mask(data.root / "Annotations/480p/bear/00000.png")
    assert palette is not None and frame0.shape == (H, W)
    assert frame0[10, 8:31].tolist() == [1] * 23 and frame0[35, 48] == 2
    assert (frame0[27:44, 37:60] == 2).all() and (frame0[:5] == 0).all()
    assert frame0[20, 20] == 0 and frame0[26:45, 36:61].sum() // 2 >= 20 * 16
    assert frame3[21:40, 10].tolist() == [1] * 19 and frame3[8, 50] == 2 and frame3[18, 42] == 0
    assert set(np.unique(frame3).tolist()) == {0, 1, 2}
    assert load_budget(store.budget_path) == {"bear": ["00000.jpg", "00003.jpg"]}


def test_propagate_shows_the_overlay_and_exports_the_pseudo_labels(browser, tmp_path: Path) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 8}, size=(H, W), annotate=[])
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    save_weights(build_model(load_config("tiny").model), checkpoint)
    store = AnnotationStore(data.root)
    model, config = load_for_inference(checkpoint, "tiny")
    jobs = PropagationJobs(store, model, config)
    with serving(store, jobs) as url:
        page, errors = open_page(browser, url)
        page.evaluate("window.annotator.state.brush = 8")
        stroke(page, [(10, 12), (40, 12)])
        page.keyboard.press("n")
        polygon(page, [(30, 30), (58, 30), (58, 44), (30, 44)])
        go_to_frame(page, 6)
        page.keyboard.press("1")
        page.keyboard.press("b")
        stroke(page, [(20, 12), (50, 12)])
        page.evaluate("window.annotator.flush()")
        page.click("#propagate")
        page.wait_for_function("window.annotator.state.job.state === 'done'", timeout=60000)
        assert page.inner_text("#progress").startswith("done 8/8")
        assert page.locator(".thumb.propagated").count() == 6  # the unlabeled frames
        go_to_frame(page, 3)
        page.wait_for_function("window.annotator.state.prop !== null")
        assert "propagated" in page.inner_text("#frame-label")
        # The overlay is drawn: the canvas changes when it is switched off.
        shown = page.locator("#canvas").screenshot()
        page.keyboard.press("o")
        hidden = page.locator("#canvas").screenshot()
        assert shown != hidden
        page.click("#export")
        page.wait_for_function("document.querySelector('#export-result').textContent.includes('dense')")
        # With a checkpoint the page offers the model's suggestions: 2 more frames to label.
        page.select_option("#suggest-strategy", "disagreement")
        page.fill("#suggest-k", "2")
        page.click("#suggest")
        page.wait_for_function("window.annotator.state.suggested.size === 2", timeout=60000)
        suggested = page.evaluate("[...window.annotator.state.suggested]")
        assert len(suggested) == 2 and not {0, 6} & set(suggested)
        assert page.locator(".thumb.suggested").count() == 2
        page.close()
    assert errors == []

    bank = tmp_path / "bank"
    argv = ["pseudo-label", "--checkpoint", str(checkpoint), "--preset", "tiny", "--data", str(data.root)]
    assert cli_main([*argv, "--budget", str(store.budget_path), "--out", str(bank), "--no-progress"]) == 0
    export = data.root / "export"
    for frame in range(8):
        mine, _ = read_mask(export / "Annotations/480p/bear" / f"{frame:05d}.png")
        np.testing.assert_array_equal(mine, read_mask(bank / "bear" / f"{frame:05d}.png")[0])
    assert (export / "overlays/bear.mp4").is_file()
    assert load_budget(export / "budget.json") == {"bear": ["00000.jpg", "00006.jpg"]}
