"""twoshot annotate in a real browser: the distribution's headless Chromium driven by Playwright,
and the served app attacked over a real socket as another web page would.

One test draws brush strokes and a polygon for two objects on two frames and checks the
PNGs on disk; one propagates with a tiny random checkpoint, checks that the overlay shows,
that the exported masks equal ``twoshot pseudo-label``'s and that the model's frame
suggestions are offered and marked; one corrects and accepts propagated frames (the
correction keeps the propagated mask); one uses every tool for new objects (each its own
id, each in the Objects bar, GrabCut busy until it answers) and checks that suggestions
persist and that the export holds out a video; one segments an object with SAM 2 clicks
(a click, a Shift+click that shrinks the mask, the PNG on disk, undo) and checks that the
Click tool is hidden, with the reason shown, without a SAM 2 checkpoint.
"""

from __future__ import annotations

import http.client
import json
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
from twoshot.annotate.security import TOKEN_HEADER
from twoshot.annotate.server import create_app
from twoshot.annotate.storage import AnnotationStore
from twoshot.cli import main as cli_main
from twoshot.config import load_config
from twoshot.data.budget import load_budget
from twoshot.data.fixtures import make_davis
from twoshot.data.masks import read_mask, write_mask
from twoshot.inference.predictor import load_for_inference
from twoshot.model import build_model, save_weights

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api")

H, W = 48, 64


@contextmanager
def serving(
    store: AnnotationStore, jobs: PropagationJobs | None = None, app_out: list | None = None
) -> Iterator[str]:
    """Run the app with uvicorn in a thread on a free local port; yields its address
    (``app_out`` receives the application, for its session token)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    app = create_app(store, jobs)
    if app_out is not None:
        app_out.append(app)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
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
    if CHROMIUM is None:
        pytest.skip("needs Chromium (apt-get install chromium)")
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
    """Page coordinates of image pixel (x, y) under the current zoom and pan, read after two
    animation frames: a change of layout (a new object's chip wrapping the toolbar) resizes
    the canvas, and the page refits its view in a ResizeObserver callback, after layout."""
    point = page.evaluate(
        "new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => "
        f"done(window.annotator.toClient({x}, {y})))))"
    )
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


def open_video(page, name: str) -> None:
    """Click a video in the list and wait until its first frame and timeline are shown."""
    page.click(f'#videos li[data-name="{name}"]')
    page.wait_for_function(f"document.querySelector('#frame-label').textContent.startsWith('{name} ')")


def go_to_frame(page, index: int) -> None:
    page.click(f'.thumb[data-frame="{index}"]')
    # The label is written once the frame, its mask and its propagation are in.
    page.wait_for_function(
        f"document.querySelector('#frame-label').textContent.includes(' frame {index} of')"
    )


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


def request(url: str, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """(status, JSON or raw body) of one request to the served app, headers as given (a
    ``Host`` among them replaces the real one)."""
    address = url.split("//")[1].rstrip("/")
    connection = http.client.HTTPConnection(address, timeout=10)
    names = {k.lower() for k in (headers or {})}
    connection.putrequest(method, path, skip_host="host" in names, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(body or b"")))
    connection.endheaders(body or b"")
    response = connection.getresponse()
    data = response.read()
    connection.close()
    is_json = response.getheader("content-type", "").startswith("application/json")
    return response.status, json.loads(data) if is_json else data


def propagated(url: str, frame: int) -> np.ndarray:
    """The labels of a propagated frame, as the server sends them."""
    status, data = request(url, "GET", f"/api/videos/bear/frames/{frame}/propagated")
    assert status == 200
    return np.frombuffer(data[: H * W], np.uint8).reshape(H, W)


def test_other_web_pages_cannot_drive_the_served_app(tmp_path: Path) -> None:
    """The attacks of a page the user visits, over a real socket: a cross-site text/plain POST
    and a DNS-rebound Host, for reads and writes."""
    data = make_davis(tmp_path / "davis", {"bear": 4}, size=(H, W), annotate=[])
    write_mask(data.root / "Annotations/480p/bear/00001.png", data.labels["bear"][1])
    store = AnnotationStore(data.root)
    apps: list = []
    with serving(store, app_out=apps) as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        token = apps[0].state.token
        evil = {"Origin": "http://evil.example.com", "Content-Type": "text/plain"}
        for path in ("/api/export", "/api/videos/bear/propagate"):
            status, body = request(url, "POST", path, evil, b"{}")
            assert status == 403 and "another web page (Origin http://evil.example.com)" in body["error"]
        status, body = request(url, "POST", "/api/export", {"Content-Type": "text/plain"}, b"{}")
        assert status == 403 and TOKEN_HEADER in body["error"]
        rebound = {"Host": f"evil.example.com:{port}"}
        status, body = request(url, "GET", "/api/videos/bear/frames/1/image", rebound)
        assert status == 421 and f"names host 'evil.example.com:{port}'" in body["error"]
        status, _ = request(url, "GET", "/api/videos/bear/frames/1/mask", rebound)
        assert status == 421
        mask = bytes(H * W)
        status, _ = request(
            url, "PUT", "/api/videos/bear/frames/1/mask", {**rebound, TOKEN_HEADER: token}, mask
        )
        assert status == 421
        assert (
            request(url, "GET", "/api/videos/bear/frames/1/image", {"Host": f"127.0.0.1:{port + 1}"})[0]
            == 421
        )
        # The served address, by either loopback name, works.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            assert request(url, "GET", "/api/videos/bear/frames/1/image", {"Host": host})[0] == 200
        assert request(url, "GET", "/")[1].decode().count(token) == 1
    assert not (data.root / "export").exists() and not store.budget_path.exists()
    np.testing.assert_array_equal(
        read_mask(data.root / "Annotations/480p/bear/00001.png")[0], data.labels["bear"][1]
    )


def test_correcting_a_propagated_frame_keeps_its_propagated_mask(browser, tmp_path: Path) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 8}, size=(H, W), annotate=[])
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    save_weights(build_model(load_config("tiny").model), checkpoint)
    store = AnnotationStore(data.root)
    model, config = load_for_inference(checkpoint, "tiny")
    jobs = PropagationJobs(store, model, config)
    pngs = data.root / "Annotations/480p/bear"
    with serving(store, jobs) as url:
        page, errors = open_page(browser, url)
        assert page.inner_text("#progress") == "not propagated yet"
        page.evaluate("window.annotator.state.brush = 10")
        stroke(page, [(10, 20), (50, 20)])
        go_to_frame(page, 7)
        stroke(page, [(14, 24), (54, 24)])
        page.evaluate("window.annotator.flush()")
        page.click("#propagate")
        page.wait_for_function("window.annotator.state.job.state === 'done'", timeout=60000)
        assert page.inner_text("#progress") == "done 8/8"
        # One short stroke in a corner of frame 3: the rest of its propagated mask stays.
        go_to_frame(page, 3)
        page.wait_for_function("window.annotator.state.prop !== null")
        before = propagated(url, 3)
        assert (before[6:] != 0).sum() > 50  # the test means something only with an object there
        page.evaluate("window.annotator.state.brush = 4")
        stroke(page, [(2, 2), (6, 2)])
        page.evaluate("window.annotator.flush()")
        saved = read_mask(pngs / "00003.png")[0]
        np.testing.assert_array_equal(saved[6:], before[6:])
        np.testing.assert_array_equal(saved[:, 10:], before[:, 10:])
        assert saved[2, 2:7].tolist() == [1] * 5
        # The canvas already shows the saved frame (no propagated overlay under it).
        shown = page.locator("#canvas").screenshot()
        page.evaluate("window.annotator.draw()")
        assert page.locator("#canvas").screenshot() == shown
        assert page.inner_text("#save-state") == "saved"
        assert page.inner_text("#progress") == "done 8/8 (labels changed since: propagate again)"
        # Accept as label: the propagated mask as it is; a frame never touched says nothing.
        go_to_frame(page, 5)
        page.wait_for_function("window.annotator.state.prop !== null")
        assert page.inner_text("#save-state") == ""
        page.click("#accept")
        page.evaluate("window.annotator.flush()")
        np.testing.assert_array_equal(read_mask(pngs / "00005.png")[0], propagated(url, 5))
        assert page.inner_text("#save-state") == "saved"
        # One way from here: frame 5 forward, up to the next labeled frame (7).
        page.click("#propagate-forward")
        page.wait_for_function(
            "window.annotator.state.job.span && window.annotator.state.job.state === 'done'"
        )
        assert page.inner_text("#progress") == "done 8/8 (forward from frame 5: 5–6) (6 kept)"
        go_to_frame(page, 6)
        assert page.is_disabled("#propagate-forward") and page.is_disabled("#propagate-backward")
        page.close()
    assert errors == []
    assert load_budget(store.budget_path) == {"bear": ["00000.jpg", "00003.jpg", "00005.jpg", "00007.jpg"]}


def test_every_tool_adds_its_object_and_suggestions_and_validation_persist(browser, tmp_path: Path) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 6, "cat": 4}, size=(H, W), annotate=[])
    store = AnnotationStore(data.root)
    chips = "[...document.querySelectorAll('#objects li')].map((li) => Number(li.dataset.id))"
    with serving(store) as url:
        page, errors = open_page(browser, url)
        assert page.inner_text("#dataset").startswith(str(data.root.resolve()))
        assert page.inner_text("#progress") == "no checkpoint loaded"
        polygon(page, [(4, 4), (20, 4), (20, 20), (4, 20)])  # object 1
        assert page.evaluate(chips) == [1]
        page.click("#add-object")
        assert page.evaluate("window.annotator.state.object") == 2
        # GrabCut is busy until the server answers, however long it takes.
        held: list = []
        page.route("**/grabcut", lambda route: held.append(route))
        page.keyboard.press("g")
        page.mouse.move(*at(page, 30, 10))  # around the fixture's object 1
        page.mouse.down()
        page.mouse.move(*at(page, 50, 26), steps=4)
        page.mouse.up()
        page.wait_for_timeout(3300)  # longer than the old 3 s notice
        assert page.inner_text("#busy") == "GrabCut…"
        held[0].continue_()
        page.wait_for_function("document.querySelector('#busy').textContent === ''")
        assert page.evaluate(chips) == [1, 2]
        page.click("#add-object")
        page.keyboard.press("f")
        page.mouse.click(*at(page, 60, 46))  # the background around both: object 3
        page.evaluate("window.annotator.flush()")
        assert page.evaluate(chips) == [1, 2, 3]
        frame0 = read_mask(data.root / "Annotations/480p/bear/00000.png")[0]
        assert (frame0[5:20, 5:20] == 1).all() and frame0[46, 60] == 3
        np.testing.assert_array_equal(frame0 == 2, data.labels["bear"][0] == 1)  # GrabCut's
        assert set(np.unique(frame0).tolist()) == {1, 2, 3}
        # Suggestions stay with their video across switching and reloading.
        page.click("#suggest")
        page.wait_for_function("window.annotator.state.suggested.size === 2")
        open_video(page, "cat")
        assert page.locator(".thumb.suggested").count() == 0
        stroke(page, [(10, 10), (30, 10)])
        open_video(page, "bear")
        assert page.locator(".thumb.suggested").count() == 2
        page.reload()
        page.wait_for_function("window.annotator && window.annotator.ready")
        assert [
            int(f)
            for f in page.eval_on_selector_all(".thumb.suggested", "els => els.map(e => e.dataset.frame)")
        ] == [1, 4]
        page.click("#export")
        page.wait_for_function("document.querySelector('#export-result').textContent !== ''")
        result = page.inner_text("#export-result")
        assert (
            result.startswith(str(data.root.resolve() / "export"))
            and "held out for validation: cat" in result
        )
        page.close()
    assert errors == []
    export = data.root / "export/ImageSets/2017"
    assert (export / "train.txt").read_text() == "bear\n" and (export / "val.txt").read_text() == "cat\n"
    assert json.loads(store.objects_path.read_text())["bear"].keys() == {"1", "2", "3"}


def test_lock_hide_background_only_and_playback(browser, tmp_path: Path) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 6}, size=(H, W), annotate=[])
    store = AnnotationStore(data.root)
    with serving(store) as url:
        page, errors = open_page(browser, url)
        page.evaluate("window.annotator.state.brush = 6")
        stroke(page, [(8, 10), (30, 10)])  # object 1
        page.click("#add-object")
        page.check("#only-background")
        page.keyboard.press("b")
        stroke(page, [(20, 2), (20, 30)])  # object 2 crosses object 1 without covering it
        page.uncheck("#only-background")
        page.click('#objects li[data-id="1"] .lock')
        page.keyboard.press("e")
        stroke(page, [(12, 2), (12, 20)])  # the eraser leaves the locked object alone
        page.click('#objects li[data-id="1"] .lock')
        page.check("#only-background")
        page.keyboard.press("2")
        stroke(page, [(20, 2), (20, 12)])  # only on background, the eraser erases object 2 only
        page.evaluate("window.annotator.flush()")
        frame0 = read_mask(data.root / "Annotations/480p/bear/00000.png")[0]
        assert frame0[10, 8:31].tolist() == [1] * 23  # neither brush nor eraser got in
        assert frame0[2:6, 20].tolist() == [0] * 4 and frame0[20:30, 20].tolist() == [2] * 10
        # Hidden: object 2 leaves the canvas, and comes back.
        shown = page.locator("#canvas").screenshot()
        page.click('#objects li[data-id="2"] .hide')
        assert page.locator("#canvas").screenshot() != shown
        page.click('#objects li[data-id="2"] .hide')
        assert page.locator("#canvas").screenshot() == shown
        # The labeled frame's thumbnail shows its mask; playback runs to the end; scrubbing.
        page.wait_for_function(
            "document.querySelector('.thumb[data-frame=\"0\"] img').src.includes('masks=1')"
        )
        page.keyboard.press("l")
        page.wait_for_function(
            "window.annotator.state.frame === 5 && window.annotator.state.playing === null"
        )
        assert page.inner_text("#play") == "Play"
        page.eval_on_selector("#scrub", "s => { s.value = 2; s.dispatchEvent(new Event('input')); }")
        page.wait_for_function("window.annotator.state.frame === 2")
        page.close()
    assert errors == []


def test_click_to_segment_with_sam2(browser, tmp_path: Path) -> None:
    """The Click tool with a random ``sam2-toy`` checkpoint: a click on an object gives the
    server's mask for it, a Shift+click inside shrinks it, and the saved PNG holds the last
    mask; without SAM 2 the tool is not offered and the toolbar says why."""
    from twoshot.model.sam2.prompt import PromptSegmenter, prompt_sequence

    data = make_davis(tmp_path / "davis", {"bear": 4}, size=(H, W), annotate=[])
    torch.manual_seed(0)
    sam = build_model(load_config("sam2-toy").model)
    with torch.no_grad():  # random weights that see objects
        sam.state_dict()["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(4.0)
    checkpoint = tmp_path / "sam2-toy.pth"
    save_weights(sam, checkpoint)
    store = AnnotationStore(data.root)
    model, config = load_for_inference(checkpoint, kind="sam2")
    jobs = PropagationJobs(store, model, config)
    segmenter = PromptSegmenter(model, config)
    features = segmenter.features(store.frame_rgb("bear", 0))

    def expected(points: list) -> np.ndarray:
        logits, _ = segmenter.segment(features, prompt_sequence(None, points), (H, W))
        return (logits > 0).numpy()

    ys, xs = np.nonzero(data.labels["bear"][0] == 1)
    positive = (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, 1)
    first = expected([positive])
    # A negative click on the first mask that shrinks it (the weights are random).
    my, mx = np.nonzero(first)
    candidates = [
        (float(mx[i]) + 0.5, float(my[i]) + 0.5, 0) for i in range(0, len(mx), max(1, len(mx) // 12))
    ]
    negative = min(candidates, key=lambda c: expected([positive, c]).sum())
    assert expected([positive, negative]).sum() < first.sum() - 20
    mask = "Array.from(window.annotator.state.mask)"
    sent: list[dict] = []
    with serving(store, jobs) as url:
        page, errors = open_page(browser, url)
        page.on(
            "request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/segment") else None
        )
        assert page.is_visible("#click-tool") and not page.is_visible("#click-note")
        page.keyboard.press("c")
        page.mouse.click(*at(page, positive[0], positive[1]))
        page.wait_for_function(f"{mask}.some((v) => v === 1)")
        page.wait_for_function("document.querySelector('#busy').textContent === ''")
        got = np.array(page.evaluate(mask), np.uint8).reshape(H, W)
        assert [p[2] for p in sent[0]["points"]] == [1] and sent[0]["object"] == 1
        np.testing.assert_array_equal(got == 1, expected(sent[0]["points"]))
        page.keyboard.down("Shift")
        page.mouse.click(*at(page, negative[0], negative[1]))
        page.keyboard.up("Shift")
        page.wait_for_function("window.annotator.state.history.get('bear/0').undo.length === 2")
        shrunk = np.array(page.evaluate(mask), np.uint8).reshape(H, W)
        assert [p[2] for p in sent[1]["points"]] == [1, 0]
        np.testing.assert_array_equal(shrunk == 1, expected(sent[1]["points"]))
        assert (shrunk == 1).sum() < (got == 1).sum()
        assert (
            page.locator("canvas").count()
            and page.evaluate("window.annotator.state.clicks.points.length") == 2
        )
        page.evaluate("window.annotator.flush()")
        np.testing.assert_array_equal(read_mask(data.root / "Annotations/480p/bear/00000.png")[0], shrunk)
        assert load_budget(store.budget_path) == {"bear": ["00000.jpg"]}
        # Undo takes the negative click back with its mask.
        page.keyboard.press("Control+z")
        assert page.evaluate("window.annotator.state.clicks.points.length") == 1
        np.testing.assert_array_equal(np.array(page.evaluate(mask), np.uint8).reshape(H, W), got)
        assert errors == []
    with serving(AnnotationStore(data.root)) as url:
        page, errors = open_page(browser, url)
        assert not page.is_visible("#click-tool") and page.is_visible("#click-note")
        assert "needs a SAM 2 checkpoint" in page.get_attribute("#click-note", "title")
        page.keyboard.press("c")
        assert "needs a SAM 2 checkpoint" in page.inner_text("#message")
        assert page.evaluate("window.annotator.state.tool") == "brush" and errors == []
