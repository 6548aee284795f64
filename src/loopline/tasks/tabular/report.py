"""The tabular evaluation report: which features the model leans on, and the scores.

Permutation importance on the test rows: each feature column's values are shuffled (raw,
before encoding, so a categorical column counts once), and the loss of accuracy (or rise
of RMSE) against the unshuffled rows is that feature's importance; the mean and spread of
a few seeded shuffles are drawn. Written as a PNG and an HTML page a person opens.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from loopline.offline.split import labeled_set
from loopline.offline.train import predict
from loopline.plots import new_figure, save_figure
from loopline.tasks.tabular.encoding import input_blocks

REPEATS = 5


def permutation_importance(task, rows: pd.DataFrame, spec, model, seed: int) -> pd.DataFrame:
    """Per feature column: mean and std of the metric's drop when that column is shuffled.

    The rows are encoded once. Shuffling a column's values across rows shuffles its block of
    model inputs the same way (`encoding.input_blocks`), so each repeat permutes that block
    instead of encoding the table again (on a million test rows, re-encoding took most of the
    evaluate stage)."""
    truth = task.targets(rows, spec, "test")
    quality = _quality(truth, spec)
    inputs = task.inputs(rows, spec)
    reference = quality(predict(model, inputs))
    blocks = input_blocks(spec.options.numeric, spec.options.vocabulary)
    rng = np.random.default_rng(seed)
    table = []
    shuffled = inputs.copy()  # one working copy: each column's block is put back after it
    for column in spec.feature_columns:
        block = blocks[column]
        drops = []
        for _ in range(REPEATS):
            order = rng.permutation(len(inputs))  # as rng.permutation(the column's values)
            shuffled[:, block] = inputs[np.ix_(order, block)]
            drops.append(reference - quality(predict(model, shuffled)))
        shuffled[:, block] = inputs[:, block]
        table.append({"feature": column, "importance": np.mean(drops), "std": np.std(drops)})
    return pd.DataFrame(table).sort_values("importance", ascending=False, ignore_index=True)


def _quality(truth: np.ndarray, spec):
    """Higher is better: accuracy, or minus the RMSE."""
    if spec.labels is not None:
        return lambda p: float((np.asarray(p).argmax(axis=1) == truth).mean())
    return lambda v: -float(np.sqrt(np.mean((np.asarray(v).reshape(-1, 1) - truth) ** 2)))


def write_report(task, evaluation, frame, spec, model, seed: int, folder: Path) -> list[Path]:

    rows = labeled_set(frame, "test", spec.target_column)
    table = permutation_importance(task, rows, spec, model, seed)
    metric = "accuracy" if spec.labels is not None else "RMSE"
    fig, ax = new_figure((7, max(2.5, 0.4 * len(table) + 1)))
    ax.barh(table["feature"][::-1], table["importance"][::-1], xerr=table["std"][::-1])
    ax.set_xlabel(f"{metric} lost when the column is shuffled (test rows)")
    ax.set_title(f"{spec.task}: permutation importance")
    picture = save_figure(fig, ax, folder / "feature_importance.png")
    page = folder / "tabular_report.html"
    page.write_text(_html(table, evaluation, metric, picture))
    return [picture, page]


def _html(table: pd.DataFrame, evaluation, metric: str, picture: Path) -> str:
    # The picture is inlined: the page opens alone (MLflow's viewer, a downloaded file).
    image = base64.b64encode(picture.read_bytes()).decode()
    scores = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(_headline(s))}</td></tr>"
        for name, s in evaluation.scores.items()
    )
    features = "".join(
        f"<tr><td>{html.escape(str(r.feature))}</td><td>{r.importance:.4f}</td>"
        f"<td>{r.std:.4f}</td></tr>"
        for r in table.itertuples()
    )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in evaluation.decision.reasons)
    return (
        "<!doctype html><meta charset='utf-8'><title>Tabular evaluation</title>"
        "<h1>Tabular evaluation</h1>"
        f"<h2>Scores on the test rows</h2><table border=1><tr><th>model</th><th>score</th></tr>"
        f"{scores}</table><h2>Gate</h2><p>promote: {evaluation.decision.promote}</p>"
        f"<ul>{reasons}</ul>"
        f"<h2>Permutation importance ({html.escape(metric)} lost when shuffled)</h2>"
        f"<img src='data:image/png;base64,{image}' alt='feature importance'>"
        f"<table border=1><tr><th>feature</th><th>importance</th><th>std</th></tr>"
        f"{features}</table>"
    )


def _headline(scores) -> str:
    values = scores.to_dict()
    keep = ("accuracy", "f1", "log_loss", "rmse", "mae", "rows")
    return ", ".join(f"{k} {values[k]:.4g}" for k in keep if k in values)
