"""SAM 2 as a registered model: ``--model sam2`` on ``twoshot infer`` and ``pseudo-label``,
the model told from a checkpoint's keys, the published ``{"model": ...}`` layout, a SAM 2 bank
training an STCN model, and the refusals (another model's checkpoint, training SAM 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from twoshot.cli import main as cli_main
from twoshot.config import load_config
from twoshot.data.fixtures import make_davis
from twoshot.data.masks import read_mask
from twoshot.data.readers import load_frames, open_dataset, reference_annotations
from twoshot.errors import UserError
from twoshot.inference import PropagationEngine
from twoshot.inference.suggest import suggest_budget
from twoshot.model import build_model, save_weights
from twoshot.model.checkpoint import detect_kind, load_model, read_state_dict
from twoshot.model.sam2 import SIZES, Sam2
from twoshot.model.sam2.spec import SIZE_NAMES

CPU = ["--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def model() -> Sam2:
    torch.manual_seed(0)
    sam = build_model(load_config("sam2-toy").model)
    assert isinstance(sam, Sam2)
    with torch.no_grad():  # random weights see every object: the masks are not all empty
        sam.state_dict()["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(4.0)
    return sam.eval()


@pytest.fixture(scope="module")
def checkpoint(model: Sam2, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sam2") / "sam2-toy.pth"
    save_weights(model, path)
    return path


def test_presets_build_each_size_and_the_registry_tells_sam2_checkpoints(
    model: Sam2, checkpoint: Path
) -> None:
    sizes = {}
    for preset in ("sam2-toy", "sam2.1-tiny", "sam2.1-small", "sam2.1-base-plus", "sam2.1-large"):
        config = load_config(preset)
        assert (
            config.model.kind == "sam2" and config.inference.amp and config.inference.amp_dtype == "bfloat16"
        )
        with torch.device("meta"):
            network = build_model(config.model)
        assert isinstance(network, Sam2)
        sizes[preset] = (network.size.name, network.image_size)
    assert sizes == {
        "sam2-toy": ("toy", 128),
        "sam2.1-tiny": ("tiny", 1024),
        "sam2.1-small": ("small", 1024),
        "sam2.1-base-plus": ("base_plus", 1024),
        "sam2.1-large": ("large", 1024),
    }
    assert tuple(SIZES) == SIZE_NAMES  # the torch-free spec's list of sizes is the network's
    assert build_model(load_config("sam2-toy", overrides=["model.sam2.image_size=64"]).model).image_size == 64
    assert detect_kind(read_state_dict(checkpoint)) == "sam2"
    with pytest.raises(UserError, match=r"config key 'model.sam2.size': 'huge' is not a SAM 2 size"):
        load_config("sam2-toy", overrides=["model.sam2.size=huge"])
    with pytest.raises(UserError, match=r"config key 'model.sam2.image_size': must be a positive multiple"):
        load_config("sam2-toy", overrides=["model.sam2.image_size=100"])
    with pytest.raises(UserError, match=r"'model.sam2.size' is a sam2 setting, but model.kind is 'stcn'"):
        load_config("stcn", overrides=["model.sam2.size=toy"])


def test_sam2_presets_load_without_torch() -> None:
    # The spec contract: the configuration reads the registered specs before any network exists.
    code = (
        "import sys; from twoshot.config import load_config; "
        "assert load_config('sam2.1-large').model.sam2.size == 'large'; "
        "assert 'torch' not in sys.modules; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr


def test_published_layout_loads_unchanged(model: Sam2, checkpoint: Path, tmp_path: Path) -> None:
    published = tmp_path / "sam2.1_hiera_toy.pt"
    torch.save({"model": model.state_dict()}, published)
    loaded = load_model(published)  # the preset found from the keys
    assert isinstance(loaded, Sam2) and loaded.size.name == "toy"
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert list(read_state_dict(published)) == list(read_state_dict(checkpoint))


def test_infer_writes_the_engines_masks(
    model: Sam2, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_davis(tmp_path / "davis", {"bear": 5, "cat": 4}, size=(48, 64), object_ids=(1, 2))
    config = load_config("sam2-toy").inference
    for name, extra in (("given", ["--model", "sam2"]), ("detected", [])):
        out = tmp_path / name
        args = ["infer", "--checkpoint", str(checkpoint), "--dataset", "davis", "--data", str(data.root)]
        assert cli_main([*args, "--out", str(out), *extra, *CPU]) == 0
        for seq in open_dataset("davis", data.root, "val"):
            given, _, _ = reference_annotations(seq)
            engine = PropagationEngine(model, config, "cpu")
            expected = engine.propagate(load_frames(seq), given).masks
            written = np.stack([read_mask(out / seq.name / f"{n}.png")[0] for n in seq.frame_names])
            np.testing.assert_array_equal(written, expected)
            assert len(np.unique(written[1:])) >= 2  # something was tracked
    assert "done: 2 videos, 9 frames" in capsys.readouterr().out


def test_sam2_bank_trains_an_stcn_model(checkpoint: Path, tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"bear": 6, "cat": 5}, size=(48, 64), object_ids=(1, 2)).root
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({"bear": ["00000.jpg", "00004.jpg"], "cat": ["00001.jpg", "00003.jpg"]}))
    davis = ["--data", str(root), "--dataset", "davis", "--split", "train"]
    bank = tmp_path / "bank"
    label = ["pseudo-label", "--checkpoint", str(checkpoint), "--model", "sam2", *davis]
    assert cli_main([*label, "--budget", str(budget), "--out", str(bank), *CPU]) == 0
    unlabeled = read_mask(bank / "bear" / "00002.png")[0]
    assert unlabeled.shape == (48, 64) and set(np.unique(unlabeled)) == {0, 1, 2}
    out = tmp_path / "stcn"
    train = ["train", "--stage", "phase2", *davis, "--bank", str(bank), "--budget", str(budget)]
    schedule = ["main.iterations=2", "main.lr_steps=[1]", "main.batch_size=1", "main.save_every=2"]
    overrides = [*schedule, "main.crop_size=32", "twoshot.phase2_start_update=1"]
    assert cli_main([*train, "--out", str(out), "--preset", "tiny", *CPU, *overrides]) == 0
    assert detect_kind(read_state_dict(out / "final.pth")) == "stcn"


def test_budget_uncertainty_propagates_with_sam2(model: Sam2, checkpoint: Path, tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"bear": 6}, size=(48, 64), object_ids=(1, 2)).root
    out = tmp_path / "budget.json"
    args = ["budget", "--data", str(root), "--dataset", "davis", "--strategy", "uncertainty"]
    assert cli_main([*args, "--checkpoint", str(checkpoint), "--device", "cpu", "--out", str(out)]) == 0
    sequences = open_dataset("davis", root, "train")
    engine = PropagationEngine(model, load_config("sam2-toy").inference, "cpu")
    expected = suggest_budget(sequences, 2, engine, strategy="uncertainty")
    assert json.loads(out.read_text()) == expected and len(expected["bear"]) == 2


def test_annotate_propagates_with_sam2_as_pseudo_label_does(checkpoint: Path, tmp_path: Path) -> None:
    from test_annotate_api import client_for, put
    from twoshot.annotate.jobs import PropagationJobs
    from twoshot.annotate.storage import AnnotationStore
    from twoshot.inference.predictor import load_for_inference

    data = make_davis(tmp_path / "davis", {"bear": 6}, size=(24, 32), annotate=[])
    store = AnnotationStore(data.root)
    model, config = load_for_inference(checkpoint, kind="sam2")
    jobs = PropagationJobs(store, model, config)
    client = client_for(store, jobs)
    put(client, "bear", 1, data.labels["bear"][1])
    put(client, "bear", 4, data.labels["bear"][4])
    assert client.post("/api/videos/bear/propagate").status_code == 202
    jobs.wait("bear", 60)
    assert client.get("/api/videos/bear/propagation").json()["state"] == "done"
    bank = tmp_path / "bank"
    argv = ["pseudo-label", "--checkpoint", str(checkpoint), "--data", str(data.root)]
    assert cli_main([*argv, "--budget", str(store.budget_path), "--out", str(bank), "--no-progress"]) == 0
    for frame in range(6):
        response = client.get(f"/api/videos/bear/frames/{frame}/propagated")
        labels = np.frombuffer(response.content[: 24 * 32], np.uint8).reshape(24, 32)
        np.testing.assert_array_equal(labels, read_mask(bank / "bear" / f"{frame:05d}.png")[0])


def test_refusals(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_davis(tmp_path / "davis", {"bear": 4}, size=(32, 32)).root
    out = tmp_path / "refused"
    infer = ["infer", "--checkpoint", str(checkpoint), "--data", str(root), "--out", str(out), *CPU]
    assert cli_main([*infer, "--model", "stcn"]) == 2
    err = capsys.readouterr().err
    assert (
        "sam2-toy.pth: not a stcn checkpoint: the weights look like a sam2 checkpoint; use --model sam2"
        in err
    )
    assert "Traceback" not in err and not out.exists()

    torch.manual_seed(0)
    stcn = tmp_path / "tiny.pth"
    save_weights(build_model(load_config("tiny").model), stcn)
    assert cli_main([*infer[:2], str(stcn), *infer[3:], "--model", "sam2"]) == 2
    assert (
        "tiny.pth: not a sam2 checkpoint: the weights look like a stcn checkpoint" in capsys.readouterr().err
    )
    assert not out.exists()

    assert cli_main([*infer, "--preset", "sam2.1-tiny"]) == 2
    err = capsys.readouterr().err
    assert "sam2-toy.pth: checkpoint does not match the sam2 model" in err
    assert "the weights fit the 'sam2-toy' preset: use --preset sam2-toy" in err and not out.exists()

    train = ["train", "--stage", "full", "--data", str(root), "--out", str(out), "--preset", "sam2-toy", *CPU]
    assert cli_main([*train, "main.sam2.layer_decay=0"]) == 2
    err = capsys.readouterr().err
    assert "config key 'main.sam2.layer_decay': must be above 0, got 0" in err
    assert "Traceback" not in err and not out.exists()
