import numpy as np
import pandas as pd
import pytest
import torch

from loopline.config import TrainParams
from loopline.errors import ParityError
from loopline.offline.export import check_parity, export_onnx
from loopline.offline.features import FeatureSpec
from loopline.offline.labeling import Examples
from loopline.offline.train import fit, plot_learning_curves, seed_everything
from loopline.offline.tune import grid_values, run_study
from loopline.onnx_runtime import onnx_session, run_onnx
from loopline.params import parse_params
from loopline.tasks.solar import SolarTask
from loopline.tasks.solar.model import Forecaster, Predictor
from loopline.tasks.solar.task import SolarHyperparameters

SPEC = FeatureSpec(
    task="t",
    feature_columns=["a", "b"],
    target_column="y",
    target_mean=0.0,
    target_std=1.0,
)
HP = {
    "hidden_size": 8,
    "num_layers": 1,
    "dropout": 0.1,
    "learning_rate": 0.01,
    "batch_size": 16,
    "window": 4,
    "cell": "lstm",
}


def toy_examples(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 2)).astype(np.float32)
    y = np.repeat(x[:, -1, :1], 3, axis=1) * 2.0  # learnable: last value of feature a
    return Examples(x, y.astype(np.float32), pd.DataFrame({"g": ["s"] * n}))


def train_once(seed=0, epochs=5, patience=2, checkpoint=None, on_epoch=None):
    seed_everything(seed)  # weights are drawn when the model is built
    model = Forecaster(2, 3, hidden_size=8, dropout=0.1)
    return fit(
        model,
        toy_examples(64, 1),
        toy_examples(32, 2),
        SPEC,
        SolarHyperparameters.from_dict(HP),
        TrainParams(max_epochs=epochs, patience=patience),
        seed=seed,
        checkpoint=checkpoint,
        on_epoch=on_epoch,
    )


class Killed(Exception):
    pass


def test_training_killed_midway_resumes_to_the_same_weights(tmp_path):
    straight = train_once(seed=5, epochs=8, patience=50)
    checkpoint = tmp_path / "train.ckpt"

    def die_after_three(epoch):
        if epoch.epoch == 3:
            raise Killed  # the process dies once epoch 3 is saved

    with pytest.raises(Killed):
        train_once(seed=5, epochs=8, patience=50, checkpoint=checkpoint, on_epoch=die_after_three)
    seen = []
    resumed = train_once(seed=5, epochs=8, patience=50, checkpoint=checkpoint, on_epoch=seen.append)
    assert [e.epoch for e in seen] == [4, 5, 6, 7, 8]  # epochs 1-3 were not trained again
    assert [e.val_loss for e in resumed.history] == [e.val_loss for e in straight.history]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_same_seed_same_data_same_metrics():
    a, b = train_once(seed=3), train_once(seed=3)
    assert [e.val_loss for e in a.history] == [e.val_loss for e in b.history]
    c = train_once(seed=4)
    assert [e.val_loss for e in a.history] != [e.val_loss for e in c.history]


def test_training_learns_and_keeps_the_best_epoch():
    result = train_once(epochs=30)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_val_loss == min(e.val_loss for e in result.history)


def test_early_stopping_records_the_overfitting_onset():
    seed_everything(0)
    model = Forecaster(2, 3, hidden_size=8)
    train = toy_examples(64, 1)
    # Validation wants the opposite of what training teaches: it gets worse from epoch 2 on.
    opposite = Examples(train.x, -train.y, train.keys)
    result = fit(
        model,
        train,
        opposite,
        SPEC,
        SolarHyperparameters.from_dict({**HP, "learning_rate": 0.05}),
        TrainParams(max_epochs=50, patience=2),
        seed=0,
    )
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 2  # patience epochs after the best
    assert result.overfitting_onset == result.best_epoch + 1
    best = min(result.history, key=lambda e: e.val_loss)
    assert best.epoch == result.best_epoch


def test_learning_curve_plot_is_a_png(tmp_path):
    path = plot_learning_curves(train_once(epochs=2), tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_grid_values_spread_ranges():
    space = SolarTask().default_space()
    assert grid_values(space["cell"], 3) == ["lstm", "gru"]
    lr = grid_values(space["learning_rate"], 3)
    assert lr[0] == pytest.approx(1e-3) and lr[-1] == pytest.approx(1e-2)
    assert lr[1] == pytest.approx(np.sqrt(1e-5))


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_each_sampler_finds_the_better_region(sampler):
    fixed = {k: {"choices": [v]} for k, v in HP.items() if k not in ("learning_rate", "cell")}
    space = {
        **fixed,
        "learning_rate": {"low": 1e-3, "high": 1e-1, "log": True},
        "cell": {"choices": ["lstm", "gru"]},
    }
    params = parse_params(
        {
            "tune": {
                "sampler": sampler,
                "n_trials": 8,
                "pruning": False,
                "grid_points": 3,
                "search_space": space,
            }
        }
    ).tune
    seen = []

    def objective(hp, report):
        report(1, 1.0)
        return abs(np.log10(hp["learning_rate"]) + 2) + (hp["cell"] == "gru")

    result = run_study(objective, params, seed=1, on_trial=seen.append)
    # the grid (3 rates x 2 cells) is exhausted after 6 trials; the others run all 8
    assert len(seen) == (6 if sampler == "grid" else 8)
    assert all(t.state == "COMPLETE" for t in seen)
    assert result.best_value == min(t.value for t in seen)
    assert result.best_hparams["cell"] == "lstm"


def test_pruning_stops_hopeless_trials():
    params = parse_params({"tune": {"sampler": "random", "n_trials": 8}}).tune
    seen = []

    def objective(hp, report):
        value = 10.0 if hp["cell"] == "gru" else 1.0
        for epoch in range(1, 6):
            report(epoch, value)
        return value

    run_study(objective, params, seed=0, on_trial=seen.append)
    assert any(t.state == "PRUNED" for t in seen)


def test_onnx_export_has_a_dynamic_batch_and_parity(tmp_path):
    model = Predictor(Forecaster(2, 3, hidden_size=8, cell="gru", target_mean=5, target_std=2))
    x = toy_examples(4, 0).x
    path = export_onnx(model, x, tmp_path / "m.onnx", {"loopline.feature_spec": "{}"})
    parity = check_parity(model, path, toy_examples(9, 1).x, atol=1e-4, rtol=1e-4)
    assert parity.passed and parity.rows == 9
    session = onnx_session(path)
    assert run_onnx(session, toy_examples(1, 2).x).shape == (1, 3)  # batch 1 works
    assert run_onnx(session, toy_examples(33, 2).x).shape == (33, 3)
    assert session.get_modelmeta().custom_metadata_map == {"loopline.feature_spec": "{}"}


def test_export_refuses_a_batch_of_one(tmp_path):
    with pytest.raises(ValueError, match="batch-1"):
        export_onnx(Predictor(Forecaster(2, 3)), toy_examples(1, 0).x, tmp_path / "m.onnx", {})


def test_parity_failure_raises(tmp_path):
    model = Predictor(Forecaster(2, 3, hidden_size=8))
    path = export_onnx(model, toy_examples(4, 0).x, tmp_path / "m.onnx", {})
    other = Predictor(Forecaster(2, 3, hidden_size=8, target_mean=100.0))
    with pytest.raises(ParityError, match="nothing was published"):
        check_parity(other, path, toy_examples(4, 0).x, atol=1e-4, rtol=1e-4)


def test_a_parallel_grid_hands_out_each_point_once(tmp_path):
    """Workers sharing one grid study (Dask tuning) each run one point of the grid, given to
    them up front, so simultaneous workers never repeat a point or miss one."""
    import threading

    from loopline.offline.tune import create_shared_study, grid_points

    fixed = {k: {"choices": [v]} for k, v in HP.items() if k not in ("window", "cell")}
    space = {**fixed, "window": {"choices": [4, 8, 12]}, "cell": {"choices": ["lstm", "gru"]}}
    params = parse_params(
        {"tune": {"sampler": "grid", "n_trials": 6, "pruning": False, "search_space": space}}
    ).tune
    storage, name = f"sqlite:///{tmp_path / 'study.db'}", "grid"
    assert create_shared_study(storage, name) == []
    points = grid_points(params)
    assert len(points) == 6 and len({tuple(p.values()) for p in points}) == 6
    seen = []

    def worker(number):
        run_study(
            lambda hp, report: float(hp["window"]),
            params.model_copy(update={"n_trials": 1}),
            seed=number,
            fixed=points[number],
            on_trial=seen.append,
            storage=storage,
            study_name=name,
        )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ran = sorted((t.hparams["window"], t.hparams["cell"]) for t in seen)
    assert ran == sorted((w, c) for w in (4, 8, 12) for c in ("lstm", "gru"))
    assert len(create_shared_study(storage, name)) == 6  # a resumed search has none left
