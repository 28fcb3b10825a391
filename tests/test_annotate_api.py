"""twoshot annotate's HTTP endpoints (Starlette TestClient): saving, versions, refusals,
GrabCut, objects, suggestions, propagation equal to ``twoshot pseudo-label``, export, CLI."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from twoshot.annotate import server as server_module
from twoshot.annotate.export import export_dataset
from twoshot.annotate.jobs import PropagationJobs
from twoshot.annotate.security import TOKEN_HEADER, parse_host, served_hosts
from twoshot.annotate.server import create_app
from twoshot.annotate.storage import AnnotationStore, RequestError
from twoshot.cli import main as cli_main
from twoshot.config import load_config
from twoshot.data.budget import apply_budget, load_budget
from twoshot.data.fixtures import make_davis, make_generic, make_video_file, make_youtube
from twoshot.data.masks import DAVIS_PALETTE, read_mask, write_mask
from twoshot.data.readers import load_frames, open_dataset
from twoshot.inference.predictor import load_for_inference
from twoshot.model import build_model, save_weights

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette's note that httpx may later be replaced
    from starlette.testclient import TestClient

H, W = 24, 32


def client_for(store: AnnotationStore, jobs: PropagationJobs | None = None, token: bool = True) -> TestClient:
    """A client of the app; ``token``: send the session token (as the page does) with every
    request, which scripts sending no Origin header need for anything that changes state."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = create_app(store, jobs)
        return TestClient(app, headers={TOKEN_HEADER: app.state.token} if token else None)


@pytest.fixture()
def davis(tmp_path: Path):
    """A DAVIS folder with no annotation at all (as a labeling session starts)."""
    return make_davis(tmp_path / "davis", {"bear": 8, "cat": 6}, annotate=[])


@pytest.fixture()
def client(davis) -> TestClient:
    return client_for(AnnotationStore(davis.root))


def box_mask(obj: int = 1, rows=(2, 8), cols=(3, 12)) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    labels[rows[0] : rows[1], cols[0] : cols[1]] = obj
    return labels


def put(client: TestClient, video: str, frame: int, labels: np.ndarray | bytes, base: str | None = ""):
    """Save a mask as the page does: its objects are added to the video first."""
    body = labels if isinstance(labels, bytes) else labels.tobytes()
    if not isinstance(labels, bytes):
        known = {o["id"] for o in client.get(f"/api/videos/{video}").json().get("objects", [])}
        for obj in sorted(set(np.unique(labels).tolist()) - {0} - known):
            client.put(f"/api/videos/{video}/objects/{obj}", json={"color": "#123456"})
    query = "" if base is None else f"?base={base}"
    return client.put(f"/api/videos/{video}/frames/{frame}/mask{query}", content=body)


# ---------------------------------------------------------------------------------------------
# Listing and reading


def test_info_videos_and_details(client: TestClient, davis) -> None:
    info = client.get("/api/info").json()
    assert info["layout"] == "davis" and info["propagation"] is False
    assert info["strategies"] == ["random", "uniform", "ends"]
    assert client.get("/api/videos").json()["videos"] == [
        {"name": "bear", "frames": 8, "labeled": 0},
        {"name": "cat", "frames": 6, "labeled": 0},
    ]
    details = client.get("/api/videos/bear").json()
    assert (details["width"], details["height"], details["frames"]) == (W, H, 8)
    assert details["labeled"] == [] and details["objects"] == []
    assert details["palette"][1] == "#800000"  # DAVIS's red when the dataset has no PNG yet


def test_frame_image_thumb_and_empty_mask(client: TestClient, davis) -> None:
    image = client.get("/api/videos/bear/frames/3/image")
    assert image.status_code == 200
    assert image.content == (davis.root / "JPEGImages/480p/bear/00003.jpg").read_bytes()
    assert client.get("/api/videos/bear/frames/3/thumb").headers["content-type"] == "image/jpeg"
    mask = client.get("/api/videos/bear/frames/3/mask")
    assert mask.headers["x-mask-version"] == "" and mask.content == bytes(H * W)
    assert client.get("/").status_code == 200 and "app.js" in client.get("/").text
    for name in ("state.js", "view.js", "edit.js", "app.js", "style.css", "index.html"):
        assert client.get(f"/static/{name}").status_code == 200


def test_timeline_thumbnails_show_the_saved_mask(client: TestClient) -> None:
    import io

    from PIL import Image

    put(client, "bear", 2, box_mask(1))
    client.put("/api/videos/bear/objects/1", json={"color": "#00ff00"})

    def thumb(query: str) -> np.ndarray:
        response = client.get(f"/api/videos/bear/frames/2/thumb{query}")
        return np.asarray(Image.open(io.BytesIO(response.content)), np.float64)

    plain, masked = thumb(""), thumb("?masks=1")
    assert plain.shape == masked.shape == (54, 72, 3)  # 54 pixels high, the frame's aspect
    # Inside the object (rows 2-8, columns 3-12, x 2.25): 55 % green over the frame.
    expected = 0.45 * plain[10, 15] + 0.55 * np.array([0, 255, 0])
    assert np.abs(masked[10, 15] - expected).max() < 25, (masked[10, 15], expected)
    assert np.abs(masked[40, 60] - plain[40, 60]).max() < 12  # background untouched
    # An unlabeled frame without propagation: the plain thumbnail.
    np.testing.assert_array_equal(
        client.get("/api/videos/bear/frames/3/thumb?masks=1").content,
        client.get("/api/videos/bear/frames/3/thumb").content,
    )


# ---------------------------------------------------------------------------------------------
# Saving


def test_save_writes_indexed_png_and_budget_and_survives_a_restart(davis) -> None:
    palette = bytes(range(256)) * 3  # a dataset with its own palette keeps it
    write_mask(davis.root / "Annotations/480p/cat/00000.png", np.zeros((H, W), np.uint8), palette)
    store = AnnotationStore(davis.root)
    client = client_for(store)
    response = put(client, "bear", 2, box_mask(1))
    assert response.status_code == 200, response.text
    saved = response.json()
    assert saved["labeled"] and saved["labeled_frames"] == [2]
    png = davis.root / "Annotations/480p/bear/00002.png"
    labels, written_palette = read_mask(png)
    np.testing.assert_array_equal(labels, box_mask(1))
    assert written_palette is not None and written_palette[:768] == palette[:768]
    assert load_budget(store.budget_path) == {"bear": ["00002.jpg"]}
    # A second object on another frame, then a restart: the same state comes back.
    assert put(client, "bear", 5, box_mask(2, rows=(10, 20))).status_code == 200
    restarted = client_for(AnnotationStore(davis.root))
    details = restarted.get("/api/videos/bear").json()
    assert details["labeled"] == [2, 5] and [o["id"] for o in details["objects"]] == [1, 2]
    mask = restarted.get("/api/videos/bear/frames/2/mask")
    assert mask.headers["x-mask-version"] == saved["version"]
    assert np.frombuffer(mask.content, np.uint8).reshape(H, W).tolist() == box_mask(1).tolist()
    # The budget is the reference format, usable as is by apply_budget (and pseudo-label).
    sequences = apply_budget(open_dataset("davis", davis.root), load_budget(store.budget_path))
    assert [sorted(s.mask_paths) for s in sequences] == [[2, 5]]


def test_stale_save_is_refused_and_writes_nothing(client: TestClient, davis) -> None:
    first = put(client, "bear", 1, box_mask(1)).json()["version"]
    png = davis.root / "Annotations/480p/bear/00001.png"
    before = png.read_bytes()
    # Another tab started from "no mask" (or from an older version): 409, file unchanged.
    for base in ("", "0123456789abcdef"):
        stale = put(client, "bear", 1, box_mask(2), base=base)
        assert stale.status_code == 409 and "changed elsewhere" in stale.json()["error"]
        assert png.read_bytes() == before
    assert put(client, "bear", 1, box_mask(2), base=first).status_code == 200
    assert read_mask(png)[0].max() == 2


def test_clearing_a_frame_takes_it_out_of_the_budget(client: TestClient, davis) -> None:
    version = put(client, "bear", 1, box_mask(1)).json()["version"]
    put(client, "bear", 4, box_mask(1))
    cleared = put(client, "bear", 1, np.zeros((H, W), np.uint8), base=version).json()
    assert not cleared["labeled"] and cleared["labeled_frames"] == [4]
    assert load_budget(davis.root / "budget.json") == {"bear": ["00004.jpg"]}
    assert read_mask(davis.root / "Annotations/480p/bear/00001.png")[0].max() == 0


def test_bad_requests_get_4xx_and_write_nothing(davis, monkeypatch) -> None:
    client = client_for(AnnotationStore(davis.root))
    annotations = davis.root / "Annotations"
    cases = [
        (put(client, "bear", 1, b"\x01" * 10), 400, "bytes"),  # malformed / wrong size
        (put(client, "bear", 1, np.ones((H + 1, W), np.uint8)), 400, "bytes"),
        (put(client, "nope", 1, box_mask()), 404, "no video"),
        (put(client, "bear", 8, box_mask()), 404, "no frame"),
        (put(client, "bear", -1, box_mask()), 404, "no frame"),
        (client.put("/api/videos/bear/frames/x/mask", content=box_mask().tobytes()), 404, "integer"),
        (client.get("/api/videos/..%2F..%2Fetc/frames/0/image"), 404, "Not Found"),
        (client.get("/api/videos/%2Fetc%2Fpasswd"), 404, "Not Found"),
        (client.get("/api/videos/%2E%2E"), 404, ""),  # ".." (clients normalise it away)
        (client.get("/api/videos/bear/frames/99/mask"), 404, "no frame"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
    assert client.get("/static/../storage.py").status_code == 404
    monkeypatch.setattr(server_module, "MAX_BODY", 100)
    too_big = put(client, "bear", 1, box_mask())
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    assert not annotations.exists() and not (davis.root / "budget.json").exists()


def test_symlinks_out_of_the_dataset_are_refused(davis, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    frame = davis.root / "JPEGImages/480p/bear/00002.jpg"
    (outside / "secret.jpg").write_bytes(frame.read_bytes())
    frame.unlink()
    frame.symlink_to(outside / "secret.jpg")
    (davis.root / "Annotations/480p").mkdir(parents=True)
    (davis.root / "Annotations/480p/cat").symlink_to(outside, target_is_directory=True)
    client = client_for(AnnotationStore(davis.root))
    refused = client.get("/api/videos/bear/frames/2/image")
    assert refused.status_code == 403 and "outside the dataset" in refused.json()["error"]
    assert client.get("/api/videos/bear/frames/1/image").status_code == 200
    write = put(client, "cat", 0, box_mask())
    assert write.status_code == 403 and list(outside.iterdir()) == [outside / "secret.jpg"]


def test_a_png_of_the_wrong_size_on_disk_is_reported(davis) -> None:
    write_mask(davis.root / "Annotations/480p/bear/00003.png", np.ones((H, W + 2), np.uint8))
    client = client_for(AnnotationStore(davis.root))
    response = client.get("/api/videos/bear/frames/3/mask")
    assert response.status_code == 422 and "34x24" in response.json()["error"]


# ---------------------------------------------------------------------------------------------
# Other web pages (the attacks a page the user visits could make)

EVIL = "http://evil.example.com"


def test_state_changes_from_another_origin_are_refused(davis, checkpoint: Path) -> None:
    store = AnnotationStore(davis.root)
    model, config = load_for_inference(checkpoint, "tiny")
    jobs = PropagationJobs(store, model, config)
    client = client_for(store, jobs)
    put(client, "bear", 1, box_mask(1))
    budget = (davis.root / "budget.json").read_bytes()
    # A cross-site "simple" request (text/plain needs no preflight): refused even with the
    # token, which such a page could not know anyway.
    attacks = [
        client.post("/api/export", content=b"{}", headers={"Origin": EVIL, "Content-Type": "text/plain"}),
        client.post("/api/videos/bear/propagate", content=b"{}", headers={"Origin": EVIL}),
        client.put("/api/videos/bear/frames/1/mask?base=", content=bytes(H * W), headers={"Origin": EVIL}),
        client.delete("/api/videos/bear/objects/1", headers={"Origin": "null"}),
        client.post("/api/export", headers={"Origin": "https://testserver"}),  # another scheme
    ]
    for response in attacks:
        assert response.status_code == 403, response.text
        assert (
            response.json()["error"].startswith("refused: a ")
            and "another web page" in response.json()["error"]
        )
    assert not (davis.root / "export").exists() and jobs.get("bear") is None
    assert (davis.root / "budget.json").read_bytes() == budget
    # Without an Origin header (a script, not a browser) the session token is required.
    bare = client_for(store, jobs, token=False)
    for response in (
        bare.post("/api/export", json={}),
        bare.post("/api/export", json={}, headers={TOKEN_HEADER: "guess"}),
    ):
        assert response.status_code == 403 and TOKEN_HEADER in response.json()["error"]
    assert not (davis.root / "export").exists()
    # The page itself: same origin (browsers send it), and reads need neither.
    same = bare.post("/api/export", json={"videos": False}, headers={"Origin": "http://testserver"})
    assert same.status_code == 200 and (davis.root / "export/budget.json").is_file()
    assert bare.get("/api/videos/bear/frames/1/mask").status_code == 200
    page = bare.get("/").text
    assert f'content="{bare.app.state.token}"' in page and len(bare.app.state.token) >= 32


def test_requests_naming_another_host_are_refused(davis) -> None:
    client = client_for(AnnotationStore(davis.root))
    for host in ("evil.example.com", "testserver:8080", "localhost"):
        read = client.get("/api/videos/bear/frames/0/image", headers={"Host": host})
        assert read.status_code == 421, host
        assert read.json()["error"].startswith(f"refused: the request names host '{host}'")
        write = client.put("/api/videos/bear/frames/0/mask", content=bytes(H * W), headers={"Host": host})
        assert write.status_code == 421
    assert not (davis.root / "Annotations").exists()
    assert client.get("/api/videos/bear/frames/0/image").status_code == 200  # Host: testserver


def test_served_hosts_and_host_parsing() -> None:
    assert served_hosts(("127.0.0.1", 8765)) == {("127.0.0.1", 8765), ("localhost", 8765), ("::1", 8765)}
    assert served_hosts(("192.168.1.5", 80), ["Labbox"]) == {("192.168.1.5", 80), ("labbox", 80)}
    assert served_hosts(None) == set()
    assert parse_host("LocalHost:8765", "http") == ("localhost", 8765)
    assert parse_host("[::1]:8765", "http") == ("::1", 8765)
    assert parse_host("example.com", "https") == ("example.com", 443)
    for bad in ("", "a:b", "user@127.0.0.1:80", "127.0.0.1:80/x", "127.0.0.1:99999"):
        assert parse_host(bad, "http") is None, bad


# ---------------------------------------------------------------------------------------------
# Bad input


def test_non_finite_or_out_of_frame_boxes_are_refused(client: TestClient) -> None:
    url = "/api/videos/bear/frames/0/grabcut"
    cases = [
        (b'{"box": [NaN, 0, 5, 5]}', "must be finite"),
        (b'{"box": [0, 0, 1e309, 5]}', "must be finite"),
        (b'{"box": [0, -Infinity, 5, 5]}', "must be finite"),
        (b'{"box": [0, 0, 33, 5]}', "(33, 5) is outside the 32x24 frame"),
        (b'{"box": [-1, 0, 5, 5]}', "(-1, 0) is outside the 32x24 frame"),
        (b'{"box": [0, 0, 5, 25]}', "(5, 25) is outside the 32x24 frame"),
        (b'{"box": [true, 0, 5, 5]}', 'expected {"box": [x0, y0, x1, y1]}'),
        (b'{"box": [0, 0, 5]}', 'expected {"box": [x0, y0, x1, y1]}'),
    ]
    for body, words in cases:
        response = client.post(url, content=body)
        assert response.status_code == 400, body
        assert words in response.json()["error"], (body, response.json())
    assert client.post(url, json={"box": [0, 0, 32, 24]}).status_code == 200  # the whole frame


def test_masks_showing_unknown_or_too_many_objects_are_refused(davis) -> None:
    store = AnnotationStore(davis.root, max_objects=3)
    client = client_for(store)
    noise = np.random.default_rng(0).integers(0, 256, H * W, dtype=np.uint8).tobytes()
    response = client.put("/api/videos/bear/frames/1/mask?base=", content=noise)
    assert response.status_code == 400
    ids = sorted(set(noise) - {0})
    listed = ", ".join(map(str, ids[:10]))
    assert f"shows object id(s) {listed} and {len(ids) - 10} more" in response.json()["error"]
    assert "its objects: none" in response.json()["error"]
    # An object the video does not have yet, then one past the cap: refused, nothing written.
    assert (
        client.put("/api/videos/bear/frames/1/mask?base=", content=box_mask(1).tobytes()).status_code == 400
    )
    refused = client.put("/api/videos/bear/objects/4", json={"color": "#00ff00"})
    assert refused.status_code == 400 and "must be 1..3" in refused.json()["error"]
    assert not (davis.root / "Annotations").exists() and not (davis.root / "budget.json").exists()
    assert not (davis.root / "budget.objects.json").exists()
    # Added first, the object can be drawn; the page learns the cap and the highest id.
    assert client.put("/api/videos/bear/objects/3", json={"color": "#00ff00"}).status_code == 200
    assert (
        client.put("/api/videos/bear/frames/1/mask?base=", content=box_mask(3).tobytes()).status_code == 200
    )
    mixed = client.put(
        "/api/videos/bear/frames/2/mask?base=", content=(box_mask(3) + box_mask(2, rows=(12, 14))).tobytes()
    )
    assert (
        mixed.status_code == 400
        and "object id(s) 2," in mixed.json()["error"]
        and "its objects: 3" in mixed.json()["error"]
    )
    details = client.get("/api/videos/bear").json()
    assert (details["max_objects"], details["max_object_id"], details["labeled"]) == (3, 3, [1])


def test_the_next_object_id_counts_every_mask_on_disk(davis) -> None:
    # A PNG on disk that the budget does not list (e.g. ground truth) still holds object 5.
    write_mask(davis.root / "Annotations/480p/bear/00004.png", box_mask(5))
    client = client_for(AnnotationStore(davis.root))
    details = client.get("/api/videos/bear").json()
    assert details["objects"] == [] and details["annotated"] == [4] and details["max_object_id"] == 5


# ---------------------------------------------------------------------------------------------
# Tools


def test_grabcut_box_finds_the_object(client: TestClient, davis) -> None:
    truth = davis.labels["bear"][0] == 1
    ys, xs = np.nonzero(truth)
    box = [int(xs.min()) - 2, int(ys.min()) - 2, int(xs.max()) + 3, int(ys.max()) + 3]
    response = client.post("/api/videos/bear/frames/0/grabcut", json={"box": box})
    assert response.status_code == 200
    fg = np.frombuffer(response.content, np.uint8).reshape(H, W).astype(bool)
    iou = (fg & truth).sum() / (fg | truth).sum()
    assert iou > 0.7, iou
    assert client.post("/api/videos/bear/frames/0/grabcut", json={"box": [1, 1, 2, 2]}).status_code == 400
    malformed = client.post("/api/videos/bear/frames/0/grabcut", content=b"{not json")
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]
    assert client.post("/api/videos/bear/frames/0/grabcut", json={"box": "x"}).status_code == 400


def test_objects_rename_recolour_delete(client: TestClient, davis) -> None:
    put(client, "bear", 1, box_mask(1) + box_mask(2, rows=(12, 18)))
    put(client, "bear", 3, box_mask(2, rows=(12, 18)))
    renamed = client.put("/api/videos/bear/objects/2", json={"name": "dog", "color": "#00FF00"})
    assert renamed.json() == {"id": 2, "name": "dog", "color": "#00ff00"}
    objects = client.get("/api/videos/bear").json()["objects"]
    assert objects[1] == {"id": 2, "name": "dog", "color": "#00ff00"}
    sidecar = json.loads((davis.root / "budget.objects.json").read_text())
    assert sidecar == {
        "bear": {"1": {"name": "object 1", "color": "#123456"}, "2": {"name": "dog", "color": "#00ff00"}}
    }
    assert client.put("/api/videos/bear/objects/2", json={"color": "red"}).status_code == 400
    assert client.put("/api/videos/bear/objects/300", json={"color": "#000000"}).status_code == 400
    deleted = client.delete("/api/videos/bear/objects/2").json()
    assert deleted == {"deleted": 2, "frames": [1, 3]}
    assert read_mask(davis.root / "Annotations/480p/bear/00001.png")[0].max() == 1
    # Frame 3 showed only object 2: it leaves the budget.
    assert load_budget(davis.root / "budget.json") == {"bear": ["00001.jpg"]}
    assert [o["id"] for o in client.get("/api/videos/bear").json()["objects"]] == [1]


def test_suggestions_follow_the_budget_strategies(client: TestClient) -> None:
    assert client.get("/api/videos/bear/suggest?k=2&strategy=uniform").json() == {"frames": [2, 6]}
    assert client.get("/api/videos/bear/suggest?k=3&strategy=ends").json() == {"frames": [0, 4, 7]}
    random = client.get("/api/videos/bear/suggest?k=2&strategy=random").json()["frames"]
    assert len(random) == 2 and random == sorted(random)
    assert client.get("/api/videos/bear/suggest?k=2&strategy=best").status_code == 400
    assert client.get("/api/videos/bear/suggest?k=zero").status_code == 400
    # Model strategies need the checkpoint the app was started without.
    response = client.get("/api/videos/bear/suggest?k=2&strategy=uncertainty")
    assert response.status_code == 409 and "--checkpoint" in response.json()["error"]


def test_propagation_needs_a_checkpoint(client: TestClient) -> None:
    response = client.post("/api/videos/bear/propagate")
    assert response.status_code == 409 and "--checkpoint" in response.json()["error"]
    assert client.get("/api/videos/bear/propagation").json()["state"] == "unavailable"
    assert client.get("/api/videos/bear/frames/1/propagated").status_code == 404


# ---------------------------------------------------------------------------------------------
# Propagation and export


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    save_weights(build_model(load_config("tiny").model), path)
    return path


def test_propagation_equals_pseudo_label_and_export(davis, checkpoint: Path, tmp_path: Path) -> None:
    store = AnnotationStore(davis.root)
    model, config = load_for_inference(checkpoint, "tiny")
    jobs = PropagationJobs(store, model, config)
    client = client_for(store, jobs)
    assert client.post("/api/videos/bear/propagate").status_code == 400  # nothing labeled yet
    put(client, "bear", 1, davis.labels["bear"][1])
    put(client, "bear", 6, davis.labels["bear"][6])
    started = client.post("/api/videos/bear/propagate")
    assert started.status_code == 202
    jobs.wait("bear", 60)
    status = client.get("/api/videos/bear/propagation").json()
    assert status["state"] == "done" and status["ready"] == list(range(8)) and not status["stale"]
    assert status["labeled"] == [1, 6] and status["first_frame_s"] is not None

    # The DAVIS reader needs an annotation in every video: cat gets one (not propagated here).
    put(client, "cat", 0, davis.labels["cat"][0])
    bank = tmp_path / "bank"
    argv = ["pseudo-label", "--checkpoint", str(checkpoint), "--preset", "tiny", "--data", str(davis.root)]
    assert cli_main([*argv, "--budget", str(store.budget_path), "--out", str(bank), "--no-progress"]) == 0
    for frame in range(8):
        response = client.get(f"/api/videos/bear/frames/{frame}/propagated")
        labels = np.frombuffer(response.content[: H * W], np.uint8).reshape(H, W)
        confidence = np.frombuffer(response.content[H * W :], np.uint8)
        np.testing.assert_array_equal(labels, read_mask(bank / "bear" / f"{frame:05d}.png")[0])
        assert confidence.max() <= 255 and confidence.size == H * W

    exported = client.post("/api/export", json={}).json()
    out = Path(exported["out"])
    assert out.is_absolute()
    # Two labeled videos: one is held out for validation, out of train.txt and the budget.
    assert exported["videos"] == [
        {"name": "bear", "frames": 8, "masks": 8, "dense": True, "split": "train"},
        {"name": "cat", "frames": 6, "masks": 1, "dense": False, "split": "val"},
    ]
    assert (exported["train"], exported["val"], exported["note"]) == (["bear"], ["cat"], "")
    assert (out / "ImageSets/2017/train.txt").read_text() == "bear\n"
    assert (out / "ImageSets/2017/val.txt").read_text() == "cat\n"
    for frame in range(8):
        mine, palette = read_mask(out / "Annotations/480p/bear" / f"{frame:05d}.png")
        np.testing.assert_array_equal(mine, read_mask(bank / "bear" / f"{frame:05d}.png")[0])
        assert palette is not None and palette[:768] == DAVIS_PALETTE
    assert (out / "overlays/bear.mp4").stat().st_size > 0
    assert load_budget(out / "budget.json") == {"bear": ["00001.jpg", "00006.jpg"]}
    # Ready for twoshot pipeline: a DAVIS root whose budget applies to the training split.
    sequences = open_dataset("davis", out, "train")
    assert [s.name for s in apply_budget(sequences, load_budget(out / "budget.json"))] == ["bear"]
    assert [s.name for s in open_dataset("davis", out, "val")] == ["cat"]

    # An edit after the run makes it stale: the export falls back to the labeled frames.
    put(client, "bear", 3, davis.labels["bear"][3])
    assert client.get("/api/videos/bear/propagation").json()["stale"]
    again = export_dataset(store, jobs, tmp_path / "second", videos=False)
    assert again["videos"][0] == {"name": "bear", "frames": 8, "masks": 3, "dense": False, "split": "train"}

    # Propagating again recomputes only the frames whose run changed, and still equals the
    # bank: first a new labeled frame (3), then a corrected one (6).
    def propagate_and_compare(expect_reused: int, bank: Path) -> None:
        assert client.post("/api/videos/bear/propagate").status_code == 202
        jobs.wait("bear", 60)
        status = client.get("/api/videos/bear/propagation").json()
        assert status["state"] == "done" and status["reused"] == expect_reused
        assert cli_main([*argv, "--budget", str(store.budget_path), "--out", str(bank), "--no-progress"]) == 0
        for frame in range(8):
            response = client.get(f"/api/videos/bear/frames/{frame}/propagated")
            labels = np.frombuffer(response.content[: H * W], np.uint8).reshape(H, W)
            np.testing.assert_array_equal(labels, read_mask(bank / "bear" / f"{frame:05d}.png")[0])

    propagate_and_compare(3, tmp_path / "bank3")  # frames 0 (from 1), 5 and 7 (from 6) kept
    corrected = davis.labels["bear"][6].copy()
    corrected[:4] = 2
    version = client.get("/api/videos/bear/frames/6/mask").headers["x-mask-version"]
    assert put(client, "bear", 6, corrected, base=version).status_code == 200
    propagate_and_compare(3, tmp_path / "bank4")  # frames 0, 2 and 4 (from 1 and 3) kept


def test_one_way_propagation_from_a_labeled_frame(davis, checkpoint: Path) -> None:
    store = AnnotationStore(davis.root)
    model, config = load_for_inference(checkpoint, "tiny")
    jobs = PropagationJobs(store, model, config)
    client = client_for(store, jobs)
    put(client, "bear", 1, davis.labels["bear"][1])
    put(client, "bear", 6, davis.labels["bear"][6])
    for body, words in (
        ({"from": 3}, "frame 3 is not labeled"),
        ({"from": 1, "direction": "sideways"}, "expected forward or backward"),
        ({"from": "1"}, "expected a frame index"),
    ):
        response = client.post("/api/videos/bear/propagate", json=body)
        assert response.status_code == 400 and words in response.json()["error"]
    assert client.post("/api/videos/bear/propagate", json={"from": 9}).status_code == 404
    assert client.post("/api/videos/bear/propagate").status_code == 202
    jobs.wait("bear", 60)
    both = {f: r[0] for f, r in jobs.get("bear").results.items()}
    frames = load_frames(store.video("bear").seq)

    def expected(order: list[int], origin: int) -> dict[int, np.ndarray]:
        """A forward run over ``order`` from ``origin``'s mask, straight from the engine."""
        runs = jobs.engine.frames(frames[order], {0: davis.labels["bear"][origin]}, direction="forward")
        return {order[out.frame]: out.labels for out in runs}

    for body, order, origin in (
        ({"from": 1}, [1, 2, 3, 4, 5], 1),  # up to the next labeled frame
        ({"from": 6, "direction": "backward"}, [6, 5, 4, 3, 2], 6),
        ({"from": 6}, [6, 7], 6),  # to the end
    ):
        previous = {f: r[0] for f, r in jobs.get("bear").results.items()}
        started = client.post("/api/videos/bear/propagate", json=body).json()
        jobs.wait("bear", 60)
        status = client.get("/api/videos/bear/propagation").json()
        assert status["state"] == "done" and status["ready"] == list(range(8)), status
        assert (
            status["span"]
            == {
                "from": origin,
                "first": min(order),
                "last": max(order),
                "direction": body.get("direction", "forward"),
            }
            == started["span"]
        )
        assert status["reused"] == 8 - len(order)
        results = {f: r[0] for f, r in jobs.get("bear").results.items()}
        for frame, labels in expected(order, origin).items():
            np.testing.assert_array_equal(results[frame], labels)
        for frame in set(range(8)) - set(order):
            np.testing.assert_array_equal(results[frame], previous[frame])
    np.testing.assert_array_equal(results[0], both[0])  # never in a span: still the first job's


@pytest.mark.parametrize("strategy", ["uncertainty", "disagreement"])
def test_model_suggestions_start_from_the_labeled_frames(davis, checkpoint: Path, strategy: str) -> None:
    store = AnnotationStore(davis.root)
    model, config = load_for_inference(checkpoint, "tiny")
    client = client_for(store, PropagationJobs(store, model, config))
    assert client.get("/api/info").json()["strategies"] == [
        "random",
        "uniform",
        "ends",
        "uncertainty",
        "disagreement",
    ]
    url = f"/api/videos/bear/suggest?strategy={strategy}"
    response = client.get(url + "&k=2")
    assert response.status_code == 400 and "no labeled frame" in response.json()["error"]
    put(client, "bear", 3, davis.labels["bear"][3])
    frames = client.get(url + "&k=3").json()["frames"]
    # k more frames, distinct, never the labeled one, the same on a second request.
    assert len(frames) == 3 == len(set(frames)) and frames == sorted(frames)
    assert 3 not in frames and all(0 <= f < 8 for f in frames)
    assert client.get(url + "&k=3").json()["frames"] == frames
    assert client.get(url + "&k=7").json()["frames"] == [0, 1, 2, 4, 5, 6, 7]
    response = client.get(url + "&k=8")
    assert response.status_code == 400 and "expected 1..7" in response.json()["error"]


def test_export_needs_labels_and_never_replaces_other_folders(client: TestClient, davis) -> None:
    response = client.post("/api/export", json={})
    assert response.status_code == 400 and "nothing to export" in response.json()["error"]
    store = client.app.state.store
    put(client, "bear", 1, box_mask(1))
    for target, words in ((davis.root, "holds the dataset"), (davis.root / "JPEGImages", "not an earlier")):
        with pytest.raises(RequestError, match=words):
            export_dataset(store, None, target, videos=False)
    assert (davis.root / "JPEGImages/480p/bear/00000.jpg").is_file()
    export_dataset(store, None, davis.root / "export", videos=False)
    export_dataset(store, None, davis.root / "export", videos=False)  # an earlier export is replaced


# ---------------------------------------------------------------------------------------------
# Other sources


def test_video_file_source(tmp_path: Path) -> None:
    data = make_video_file(tmp_path / "clip.mp4", 6, size=(24, 32), mask_frames=())
    store = AnnotationStore(data.root)
    assert store.budget_path == tmp_path / "clip_budget.json"
    client = client_for(store)
    assert client.get("/api/videos").json()["videos"] == [{"name": "clip", "frames": 6, "labeled": 0}]
    image = client.get("/api/videos/clip/frames/4/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert put(client, "clip", 4, box_mask(1)).status_code == 200
    np.testing.assert_array_equal(read_mask(tmp_path / "clip_masks/00004.png")[0], box_mask(1))
    assert load_budget(store.budget_path) == {"clip": ["00004"]}
    assert AnnotationStore(data.root).labeled == {"clip": {4}}


def test_generic_source_keeps_existing_annotations_visible(tmp_path: Path) -> None:
    data = make_generic(tmp_path / "generic", {"a": 5})
    client = client_for(AnnotationStore(data.root))
    details = client.get("/api/videos/a").json()
    assert details["labeled"] == [] and details["annotated"] == [0]
    version = client.get("/api/videos/a/frames/0/mask").headers["x-mask-version"]
    assert version and put(client, "a", 0, box_mask(1), base=version).status_code == 200
    assert client.get("/api/videos/a").json()["labeled"] == [0]


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_refuses_a_bad_checkpoint_before_serving(davis, tmp_path: Path, capsys, monkeypatch) -> None:
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(sockets))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["annotate", str(davis.root), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "cannot load checkpoint" in err and not served
    assert cli_main(["annotate", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_serves_locally_and_warns_elsewhere(davis, capsys, monkeypatch) -> None:
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(sockets))
    assert cli_main(["annotate", str(davis.root), "--port", "0"]) == 0
    captured = capsys.readouterr()
    assert "open http://127.0.0.1:" in captured.out and "warning" not in captured.err
    assert served[0][0].getsockname()[0] == "127.0.0.1"
    served[0][0].close()
    assert cli_main(["annotate", str(davis.root), "--port", "0", "--host", "0.0.0.0"]) == 0
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err
    served[1][0].close()


def test_cli_object_limit_and_host_name(davis, capsys, monkeypatch) -> None:
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append((self, sockets)))
    assert cli_main(["annotate", str(davis.root), "--port", "0", "--max-objects", "300"]) == 2
    assert "--max-objects 300: expected 1..255" in capsys.readouterr().err and not served
    assert (
        cli_main(["annotate", str(davis.root), "--port", "0", "--max-objects", "5", "--host", "localhost"])
        == 0
    )
    server, sockets = served[0]
    sockets[0].close()
    app = server.config.app
    assert app.state.store.max_objects == 5
    # The name given to --host is a Host the app answers to (at the served port).
    assert [m.kwargs["names"] for m in app.user_middleware] == [["localhost"]]


def test_cli_refuses_a_budget_naming_unknown_frames(davis, capsys) -> None:
    (davis.root / "budget.json").write_text(json.dumps({"bear": ["00099.jpg"]}))
    assert cli_main(["annotate", str(davis.root), "--port", "0"]) == 2
    assert "has no frame 00099.jpg" in capsys.readouterr().err
    assert os.path.exists(davis.root / "budget.json")


def test_youtube_root_opens_its_training_split(tmp_path: Path) -> None:
    data = make_youtube(tmp_path / "yt")
    store = AnnotationStore(data.root)
    name = next(iter(store.videos))
    client = client_for(store)
    labels = np.ones(store.frame_size(name), np.uint8)
    assert put(client, name, 1, labels).status_code == 200
    assert (data.root / "train/Annotations" / name / f"{store.video(name).seq.frame_names[1]}.png").is_file()
