"""Click-to-segment with SAM 2: the prompt path (coordinates, labels, the multimask choice, the
previous logits fed back, chains reused) against expectations computed here, the app's
feature cache, and the ``/segment`` endpoint with its refusals. The browser test is in
``test_annotate_browser.py``; equality with the reference is ``benchmarks/sam2_reference.py
--sections clicks``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from test_annotate_api import client_for, put
from twoshot.annotate.clicks import ClickSegmenter
from twoshot.annotate.jobs import PropagationJobs
from twoshot.annotate.storage import AnnotationStore
from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import make_davis
from twoshot.inference.predictor import load_for_inference
from twoshot.model import build_model, save_weights
from twoshot.model.sam2 import Sam2
from twoshot.model.sam2.prompt import (
    PromptSegmenter,
    Step,
    point_inputs,
    prepare_image,
    prompt_sequence,
)

H, W = 48, 80  # not square: x and y scale differently to the 128-pixel input
FP32 = InferenceConfig(size=-1, amp=False, device="cpu")


@pytest.fixture(scope="module")
def model() -> Sam2:
    torch.manual_seed(0)
    sam = build_model(load_config("sam2-toy").model)
    assert isinstance(sam, Sam2)
    with torch.no_grad():  # random weights see the object: masks are not all empty
        sam.state_dict()["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(4.0)
    return sam.eval()


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.kron(rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))


def test_prompt_points_are_normalised_by_the_frames_width_and_height() -> None:
    points = prompt_sequence((8, 6, 40, 30), [(20, 12, 1), (70.5, 47, 0)])
    assert points == [(8, 6, 2), (40, 30, 3), (20.0, 12.0, 1), (70.5, 47.0, 0)]
    coords, labels = point_inputs(points, (H, W), 128)
    assert labels.dtype == torch.int32 and labels.tolist() == [[2, 3, 1, 0]]
    expected = [[8 * 128 / 80, 6 * 128 / 48], [64.0, 80.0], [32.0, 32.0], [70.5 * 128 / 80, 47 * 128 / 48]]
    np.testing.assert_allclose(coords[0].numpy(), expected, rtol=1e-6)
    assert prompt_sequence(None, [(1, 2, 0)]) == [(1.0, 2.0, 0)]


def test_prompt_encoder_labels_positive_negative_and_box_corners(model: Sam2) -> None:
    """Each point's token: the random Fourier encoding of its pixel centre in [0, 1]^2 plus
    the learned embedding of its label (0 negative, 1 positive, 2 / 3 box corners); a padding
    point (label -1) is the "not a point" embedding alone."""
    encoder = model.sam_prompt_encoder
    coords, labels = point_inputs(prompt_sequence((8, 6, 40, 30), [(20, 12, 1), (70, 40, 0)]), (H, W), 128)
    with torch.no_grad():
        sparse, dense = encoder((coords, labels), None)
    assert sparse.shape == (1, 5, 256) and dense.shape == (1, 256, 8, 8)
    gaussian = encoder.pe_layer.positional_encoding_gaussian_matrix
    for i, label in enumerate([2, 3, 1, 0]):
        x, y = ((coords[0, i] + 0.5) / 128).tolist()
        angles = 2 * math.pi * (torch.tensor([2 * x - 1, 2 * y - 1]) @ gaussian)
        expected = torch.cat([angles.sin(), angles.cos()]) + encoder.point_embeddings[label].weight[0]
        torch.testing.assert_close(sparse[0, i], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse[0, 4], encoder.not_a_point_embed.weight[0])


def test_one_click_keeps_the_multimask_output_with_the_best_predicted_iou(
    model: Sam2, frame: np.ndarray
) -> None:
    segmenter = PromptSegmenter(model, FP32, fill_hole_area=0)
    features = segmenter.features(frame)
    points = prompt_sequence(None, [(30, 20, 1)])
    step = segmenter.step(features, points, (H, W), None)
    coords, labels = point_inputs(points, (H, W), 128)
    with torch.no_grad():
        image = features.features + model.no_mem_embed.view(1, -1, 1, 1)
        sparse, dense = model.sam_prompt_encoder((coords, labels), None)
        masks, iou, _, score = model.sam_mask_decoder.predict(
            image, model.sam_prompt_encoder.dense_positions(), sparse, dense, features.high_res
        )
    assert float(score) > 0
    best = 1 + int(iou[0, 1:].argmax())  # mask 0 is the single-mask output, 1..3 the multimask ones
    torch.testing.assert_close(step.low_res, masks[:, best : best + 1], rtol=1e-4, atol=1e-4)
    logits, chain = segmenter.segment(features, points, (H, W))
    expected = torch.nn.functional.interpolate(
        step.low_res, size=(H, W), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(logits, expected[0, 0])
    assert len(chain) == 1


def test_previous_logits_are_clamped_and_fed_back(model: Sam2, frame: np.ndarray) -> None:
    segmenter = PromptSegmenter(model, FP32, fill_hole_area=0)
    features = segmenter.features(frame)
    points = prompt_sequence(None, [(30, 20, 1), (50, 30, 0)])
    sign = torch.where(torch.arange(32 * 32).view(1, 1, 32, 32) % 3 == 0, 1.0, -1.0)

    def with_previous(scale: float) -> torch.Tensor:
        return segmenter.step(features, points, (H, W), Step(tuple(points[:1]), sign * scale)).low_res

    torch.testing.assert_close(with_previous(100.0), with_previous(32.0), rtol=0, atol=0)
    assert not torch.equal(with_previous(32.0), with_previous(20.0))
    assert not torch.equal(with_previous(32.0), segmenter.step(features, points, (H, W), None).low_res)


def test_chains_reuse_their_steps_and_equal_a_fresh_computation(model: Sam2, frame: np.ndarray) -> None:
    segmenter = PromptSegmenter(model, load_config("sam2-toy").inference)  # bfloat16, holes filled
    features = segmenter.features(frame)
    box = (10.0, 8.0, 60.0, 40.0)
    three = prompt_sequence(box, [(30, 20, 0), (40, 25, 1)])
    first, chain = segmenter.segment(features, three[:3], (H, W))
    assert [len(s.points) for s in chain] == [2, 3]  # the box's corners are one step
    again, longer = segmenter.segment(features, three, (H, W), chain)
    assert longer[:2] == chain and len(longer) == 3
    fresh, _ = segmenter.segment(features, three, (H, W))
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    moved = prompt_sequence(box, [(31, 20, 0), (40, 25, 1)])
    _, other = segmenter.segment(features, moved, (H, W), longer)
    assert other[0] is longer[0] and other[1] is not longer[1]
    with pytest.raises(ValueError, match="at least one click or a box"):
        segmenter.segment(features, [], (H, W))


def test_prepare_image_resizes_to_the_square_input(frame: np.ndarray) -> None:
    image = prepare_image(frame, 128)
    assert image.shape == (1, 3, 128, 128) and image.dtype == torch.float32
    square = prepare_image(np.zeros((128, 128, 3), np.uint8), 128)
    mean = torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(square[0, :, 5, 7], -mean)


# ---------------------------------------------------------------------------------------------
# The app


@pytest.fixture()
def app_parts(model: Sam2, tmp_path: Path):
    data = make_davis(tmp_path / "davis", {"bear": 5}, size=(H, W), annotate=[])
    checkpoint = tmp_path / "sam2-toy.pth"
    save_weights(model, checkpoint)
    sam, config = load_for_inference(checkpoint, kind="sam2")
    store = AnnotationStore(data.root)
    jobs = PropagationJobs(store, sam, config)
    return data, store, jobs


def test_segment_answers_the_prompt_paths_mask_and_writes_nothing(app_parts) -> None:
    data, store, jobs = app_parts
    client = client_for(store, jobs)
    info = client.get("/api/info").json()
    assert info["clicks"] is True and info["clicks_unavailable"] is None
    assert client.put("/api/videos/bear/objects/1", json={"color": "#ff0000"}).status_code == 200
    payload = {"object": 1, "box": None, "points": [[30, 20, 1]]}
    response = client.post("/api/videos/bear/frames/2/segment", json=payload)
    assert response.status_code == 200, response.text
    assert (response.headers["x-height"], response.headers["x-width"]) == (str(H), str(W))
    assert response.headers["x-encoded"] == "1"
    got = np.frombuffer(response.content, np.uint8).reshape(H, W)
    segmenter = PromptSegmenter(jobs.engine.model, jobs.engine.config)
    features = segmenter.features(store.frame_rgb("bear", 2))
    logits, _ = segmenter.segment(features, prompt_sequence(None, [(30, 20, 1)]), (H, W))
    np.testing.assert_array_equal(got, (logits > 0).numpy().astype(np.uint8))
    assert 0 < got.sum() < H * W
    payload["points"].append([50, 30, 0])
    second = client.post("/api/videos/bear/frames/2/segment", json=payload)
    assert second.headers["x-encoded"] == "0"  # the frame's features were kept
    expected, _ = segmenter.segment(features, prompt_sequence(None, [(30, 20, 1), (50, 30, 0)]), (H, W))
    np.testing.assert_array_equal(
        np.frombuffer(second.content, np.uint8).reshape(H, W), (expected > 0).numpy()
    )
    assert not (data.root / "Annotations" / "480p" / "bear").exists() or not any(
        (data.root / "Annotations" / "480p" / "bear").iterdir()
    )
    assert store.labeled["bear"] == set()
    # The page saves the mask through the ordinary save.
    assert put(client, "bear", 2, got).status_code == 200 and store.labeled["bear"] == {2}


def test_segment_refusals(app_parts) -> None:
    data, store, jobs = app_parts
    client = client_for(store, jobs)
    url = "/api/videos/bear/frames/1/segment"
    client.put("/api/videos/bear/objects/1", json={"color": "#ff0000"})
    refusals = {
        '{"object": 1, "points": [[NaN, 3, 1]]}': "click (nan, 3): coordinates must be finite numbers",
        '{"object": 1, "points": [[81, 3, 1]]}': f"click (81, 3) is outside the {W}x{H} frame",
        '{"object": 1, "box": [0, 0, 10, -1]}': f"box corner (10, -1) is outside the {W}x{H} frame",
        '{"object": 1, "box": [0, 0, 10, Infinity]}': "box corner (10, inf): coordinates must be finite",
        '{"object": 1, "points": [[3, 3, 2]]}': 'expected "points": [[x, y, label], ...]',
        '{"object": 1, "points": []}': "no prompt: give at least one click or a box",
        '{"object": 4, "points": [[3, 3, 1]]}': "object 4: bear has no such object (its objects: 1)",
        '{"object": "1", "points": [[3, 3, 1]]}': "expected \"object\": an object id, got '1'",
        "[1]": "expected a JSON object body",
    }
    for body, message in refusals.items():
        response = client.post(url, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, body
        assert message in response.json()["error"], (body, response.json())
    assert client.post("/api/videos/bear/frames/9/segment", json={}).status_code == 404
    # Another origin, or a script without the token, is refused before any work.
    other = client.post(
        url, json={"object": 1, "points": [[3, 3, 1]]}, headers={"Origin": "http://evil.test"}
    )
    assert other.status_code == 403
    assert (
        client_for(store, jobs, token=False).post(url, json={"object": 1, "points": [[3, 3, 1]]}).status_code
        == 403
    )
    assert store.labeled["bear"] == set() and not list(data.root.glob("Annotations/480p/bear/*.png"))


def test_without_a_sam2_model_the_click_path_is_refused_and_reported(tmp_path: Path) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 3}, size=(H, W), annotate=[])
    store = AnnotationStore(data.root)
    client = client_for(store)
    info = client.get("/api/info").json()
    assert info["clicks"] is False and "needs a SAM 2 checkpoint" in info["clicks_unavailable"]
    client.put("/api/videos/bear/objects/1", json={"color": "#ff0000"})
    response = client.post("/api/videos/bear/frames/0/segment", json={"object": 1, "points": [[3, 3, 1]]})
    assert response.status_code == 400 and response.json()["error"] == info["clicks_unavailable"]
    stcn = tmp_path / "stcn.pth"
    save_weights(build_model(load_config("tiny").model), stcn)
    model, config = load_for_inference(stcn, "tiny")
    client = client_for(store, PropagationJobs(store, model, config))
    info = client.get("/api/info").json()
    assert info["clicks"] is False
    assert info["clicks_unavailable"] == (
        "click-to-segment needs a SAM 2 checkpoint; the loaded checkpoint is a stcn model"
    )
    response = client.post("/api/videos/bear/frames/0/segment", json={"object": 1, "points": [[3, 3, 1]]})
    assert response.status_code == 400 and "stcn" in response.json()["error"]


def test_frame_features_are_an_lru_of_bounded_size(app_parts) -> None:
    _, store, jobs = app_parts
    store.set_object("bear", 1, "", "#ff0000")
    clicks = ClickSegmenter(store, jobs.engine.model, jobs.engine.config, jobs.engine.device, cached_frames=2)
    payload = {"object": 1, "points": [[10, 10, 1]]}
    for frame in (0, 1, 2):
        assert clicks.segment("bear", frame, payload)[1]["encoded"] is True
    assert clicks.cached == [("bear", 1), ("bear", 2)] and clicks.encodes == 3
    assert clicks.segment("bear", 1, payload)[1]["encoded"] is False
    assert clicks.cached == [("bear", 2), ("bear", 1)]
    assert clicks.segment("bear", 0, payload)[1]["encoded"] is True  # dropped: encoded again
    assert clicks.cached == [("bear", 1), ("bear", 0)] and clicks.encodes == 4
    assert {key[:2] for key in clicks._chains} == {("bear", 1), ("bear", 0)}
