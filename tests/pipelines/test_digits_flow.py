"""The digits task (scikit-learn's 8×8 handwritten digits) through the same offline flow:
validated pixels, a stratified split, a small CNN beside a pixel logistic regression,
ONNX export, publish."""

from __future__ import annotations

import numpy as np
import pytest

from loopline import registry
from loopline.paths import ProjectPaths
from tests.conftest import write_project

pytestmark = pytest.mark.usefixtures("prefect_harness")

TINY_DIGITS = {
    "task": "digits",
    "seed": 5,
    # One fixed, gentle point of the space: with a random learning rate up to 1e-2 the
    # CNN's test accuracy swung from 0.94 to 0.99 between machines (float kernels differ
    # between CPUs) and it lost to the pixel baseline on some; at 2e-3 its validation loss
    # still jumped between epochs and it tied the baseline (0.9894) on this machine's CPU, and
    # with 64 hidden units it tied the baseline again on another machine (0.9841 each; 3 of 189
    # test images): 128 hidden units and longer patience put it at 1.0 there, clear of either.
    "tune": {
        "sampler": "random",
        "n_trials": 1,
        "max_epochs": 2,
        "search_space": {
            "channels": {"choices": [32]},
            "hidden_size": {"choices": [128]},
            "dropout": {"choices": [0.1]},
            "learning_rate": {"choices": [0.001]},
            "batch_size": {"choices": [32]},
        },
    },
    # One torch thread: the same weights whatever the machine or the workers beside it.
    "train": {"max_epochs": 60, "patience": 12, "threads": 1},
    # A test set of ~540 images, not ~180: on 180 the pixel baseline's 2 errors left the CNN
    # one image to beat it by, and float kernels differ between CPUs (the CNN made 3 on one
    # machine, 0 on another): the comparison was the CPU's, not the models'.
    "split": {"train": 0.6, "val": 0.1, "test": 0.3},
}


def test_digits_run_publishes_an_accurate_cnn_champion(tmp_path, monkeypatch):
    from loopline.onnx_runtime import run_onnx
    from loopline.tasks.digits.task import DigitsTask
    from loopline.tasks.image.images import images
    from pipelines.offline import offline_flow

    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        monkeypatch.delenv(var, raising=False)
    root = write_project(tmp_path / "proj", TINY_DIGITS)
    summary = offline_flow(root=str(root))  # ingest.source defaults to the task's own data
    assert summary["status"] == "published" and summary["promoted"], summary
    metrics = summary["metrics"]
    assert metrics["test_accuracy"] >= 0.97
    assert metrics["test_accuracy"] > metrics["pixel_logistic_baseline_accuracy"]
    # 30 % of 1,797 by the hash of each image's id: within three binomial errors of 539.
    assert abs(metrics["test_rows"] - 539.1) <= 3 * (1797 * 0.3 * 0.7) ** 0.5
    paths = ProjectPaths.at(root)
    client = registry.client(paths.tracking_uri())
    plots = {a.path for a in client.list_artifacts(summary["run_id"], "plots")}
    assert {"plots/confusion_matrix.png", "plots/learning_curves.png"} <= plots
    session, spec, _ = registry.load_champion(paths.tracking_uri(), "digits", tmp_path / "m")
    raw = DigitsTask().load_builtin(None)
    for rows in (raw.head(1), raw.head(37)):
        probabilities = run_onnx(session, images(rows, spec))
        assert probabilities.shape == (len(rows), 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    predicted = run_onnx(session, images(raw.head(200), spec)).argmax(axis=1)
    assert (predicted == raw["label"].head(200).to_numpy()).mean() > 0.95


def _digits_csv(path, digits, per_class=None):
    """scikit-learn's digits of the given classes as a user's CSV source."""
    from loopline.tasks.digits.task import DigitsTask

    raw = DigitsTask().load_builtin(None)
    rows = raw[raw["label"].isin(digits)]
    if per_class is not None:
        rows = rows.groupby("label", group_keys=False).head(per_class)
    rows.to_csv(path, index=False)
    return path


def test_transfer_from_a_registered_champion_to_new_digits(tmp_path, monkeypatch):
    """Digits 0-4 are published as `digits`; another project (same registry) learns 5-9
    from `models:/digits@champion`: the conv blocks are the champion's, the head is new and
    sized for 5-9, and the published version records what it started from."""
    import torch

    from loopline.offline.transfer import load_source
    from pipelines.offline import offline_flow

    monkeypatch.delenv("LOOPLINE_HOME", raising=False)
    uri = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    first = {**TINY_DIGITS, "ingest": {"source": str(_digits_csv(tmp_path / "a.csv", range(5)))}}
    source_run = offline_flow(root=str(write_project(tmp_path / "a", first)))
    assert source_run["status"] == "published", source_run
    # On 0-4 the pixel baseline may tie the CNN and hold the gate: an operator promotes it.
    registry.move_champion(uri, "digits", source_run["version"], "source of the transfer")

    second = {
        **TINY_DIGITS,
        "ingest": {"source": str(_digits_csv(tmp_path / "b.csv", range(5, 10), per_class=40))},
        "publish": {"model_name": "digits-upper"},
        "train": {
            **TINY_DIGITS["train"],
            "init_from": "models:/digits@champion",
            "transfer": {"mode": "freeze", "freeze": ["features.0"]},
        },
    }
    target_run = offline_flow(root=str(write_project(tmp_path / "b", second)))
    assert target_run["status"] == "published", target_run
    assert target_run["metrics"]["test_accuracy"] >= 0.6  # 5 classes, 32 images each

    client = registry.client(uri)
    tags = client.get_run(target_run["run_id"]).data.tags
    assert tags["loopline.init_from"] == f"models:/digits/1 (run {source_run['run_id']})"
    assert tags["loopline.transfer.fresh"] == "head"
    assert tags["loopline.transfer.copied"] == "features.1,features.0"
    version = client.get_model_version("digits-upper", target_run["version"])
    assert version.tags["loopline.init_from"].startswith("models:/digits/1")

    before = load_source(f"runs:/{source_run['run_id']}", uri, tmp_path / "s").state_dict
    after_source = load_source(f"runs:/{target_run['run_id']}", uri, tmp_path / "t")
    after = after_source.state_dict
    assert after_source.spec.labels == ["5", "6", "7", "8", "9"]
    assert after["head.5.weight"].shape[0] == 5
    # The frozen first block is the champion's, weights and batch-norm statistics alike;
    # the second block learned.
    for key in before:
        if key.startswith("features.0."):
            assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["features.1.0.weight"], before["features.1.0.weight"])

    # A reference to nothing fails the run before training and names it.
    bad = {**second, "train": {**second["train"], "init_from": "models:/digits@nosuch"}}
    with pytest.raises(ValueError, match="'models:/digits@nosuch': no such model version"):
        offline_flow(root=str(write_project(tmp_path / "c", bad)))


def _image_folder(folder, per_class: int = 25, side: int = 24):
    """A user's folder: RGB PNG scans (dark ink on white) of scikit-learn digits, a labels
    CSV, and three bad entries: a text file named .png, a missing file, a label 11."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True)
    lines = ["file,label"]
    chosen = [i for d in range(10) for i in np.flatnonzero(digits.target == d)[:per_class]]
    for i in chosen:
        ink = digits.images[i] / 16.0
        grey = Image.fromarray((255 * (1 - ink)).astype(np.uint8), "L").resize((side, side))
        name = f"scans/{i:04d}.png"
        (folder / "scans").mkdir(exist_ok=True)
        grey.convert("RGB").save(folder / name)
        lines.append(f"{name},{digits.target[i]}")
    (folder / "scans" / "broken.png").write_text("not an image")
    (folder / "scans" / "extra.png").write_bytes((folder / lines[1].split(",")[0]).read_bytes())
    lines += ["scans/broken.png,3", "scans/lost.png,4", "scans/extra.png,11"]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_an_image_folder_is_read_resized_in_rgb_and_bad_files_quarantined(tmp_path, monkeypatch):
    import pandas as pd

    from loopline.tasks.image.images import image_from_bytes
    from pipelines.offline import offline_flow

    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        monkeypatch.delenv(var, raising=False)
    params = {
        **TINY_DIGITS,
        "ingest": {"source": "images"},  # a folder, relative to the project
        "digits": {"image_size": 12, "channels": 3, "max_pixel": 255},
    }
    root = write_project(tmp_path / "proj", params)
    _image_folder(root / "images")
    summary = offline_flow(root=str(root))
    assert summary["status"] == "published", summary
    assert summary["metrics"]["test_accuracy"] >= 0.6, summary  # 250 small scans, 12×12 RGB

    paths = ProjectPaths.at(root)
    quarantine = pd.concat(pd.read_csv(p) for p in (paths.quarantine / "digits").glob("*.csv"))
    reasons = dict(zip(quarantine["id"], quarantine["_reasons"], strict=True))
    assert set(reasons) == {"scans/broken.png", "scans/lost.png", "scans/extra.png"}
    assert reasons["scans/broken.png"] == "image_readable"
    assert reasons["scans/lost.png"] == "image_readable"
    assert reasons["scans/extra.png"] == "label_is_a_digit"

    from loopline.onnx_runtime import embedded_spec, onnx_session

    reference = f"models:/digits/{summary['version']}"
    folder = registry.download_model(paths.tracking_uri(), reference, tmp_path / "m")
    session = onnx_session(folder / "model.onnx")
    spec = embedded_spec(session)
    assert (spec.options.image_size, spec.options.channels) == (12, 3)
    assert session.get_inputs()[0].shape[1:] == [3, 12, 12]
    upload = (root / "images" / "scans" / "0005.png").read_bytes()
    assert image_from_bytes(upload, spec, 1024, "dark").shape == (3, 12, 12)
