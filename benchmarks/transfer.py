"""Transfer learning on digits: learn 0-4, then 5-9 from few labels, fine-tuned vs from scratch;
and how much of 0-4 the fine-tuned encoder forgets.

Run: .venv/bin/python benchmarks/transfer.py [--seeds 0 1 2] [--labels 10 50 0] [--out DIR]
[--json [PATH]] [--threads N]
(about 3 minutes on 2 CPU cores with 1 torch thread for 3 seeds).

Data: scikit-learn's 1,797 digits (`builtin:digits`). Per seed, a stratified 30% of every
digit is the test set; the rest is the pool labels are drawn from.

1. Source: the digits CNN (`loopline.tasks.image.task`, channels 16, hidden 64, dropout 0.2,
   lr 3e-3, batch 32, the task's default augmentation) trained on pool images of 0-4 (80%
   train, 20% validation for early stopping) by `loopline.offline.train.train_model`, exactly as
   the pipeline trains; saved with `save_checkpoint` as a run logs it.
2. Target: 5-9 with `n` labels per class (10, 50, all; drawn from the pool with the seed).
   Those n are all the labels there are: 80% train, 20% (at least 1 per class) validation.
   The same `train_model` call trains, with the same seed and labels:
   - scratch: random initial weights;
   - each `train.transfer.mode` with `train.init_from` = the source checkpoint: the conv
     blocks are copied, the head is new (5-9 is another label set).
   At most 60 epochs, patience 10.
3. Test accuracy on the 5-9 test images. Forgetting: the fine-tuned conv blocks with the
   source's own 0-4 head put back, on the 0-4 test images, against the source model
   before fine-tuning.

Prints the tables (mean ± sd over seeds) and writes <out>/transfer.png (accuracy vs labels
per class) and, with --json, the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DEFAULT_OUT = Path("/tmp/loopline-bench/transfer")
MODES = ("none", "freeze", "gradual_unfreeze", "discriminative_lr")
HPARAMS = {
    "channels": 16,
    "hidden_size": 64,
    "dropout": 0.2,
    "learning_rate": 3e-3,
    "batch_size": 32,
}
OLD, NEW = tuple(range(5)), tuple(range(5, 10))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


AUGMENT = True  # --no-augment turns the task's training augmentation off


def params_for(seed: int, threads: int, init_from: str | None = None, mode: str = "none"):
    from loopline.config import Params

    off = {"shift_px": 0, "rotate_deg": 0, "noise": 0, "contrast": 0}
    return Params.model_validate(
        {
            "task": "digits",
            "seed": seed,
            "digits": {} if AUGMENT else {"augment": off},
            "train": {
                "max_epochs": 60,
                "patience": 10,
                "threads": threads,
                "init_from": init_from,
                "transfer": {"mode": mode},
            },
        }
    )


def per_class(rows, n: int | None, seed: int):
    """`n` rows of every digit (all with None), drawn with the seed."""
    if n is None:
        return rows
    return rows.groupby("label", group_keys=False).sample(n=n, random_state=seed)


def with_split(rows, val_share: float, seed: int):
    """80/20 train/validation within every digit, at least one validation image each."""
    rows = rows.copy()
    rows["split"] = "train"
    for _, group in rows.groupby("label"):
        k = max(1, round(len(group) * val_share))
        rows.loc[group.sample(n=k, random_state=seed).index, "split"] = "val"
    return rows


def accuracy(task, model, frame, spec) -> float:
    from loopline.offline.train import predict

    test = task.examples(frame, spec, "test")
    return float((predict(model, test.x).argmax(axis=1) == test.y).mean())


def train(task, frame, params):
    """`train_model` as the pipeline's train stage calls it, `train.init_from` resolved by
    `load_source` as the flow's init-from stage does."""
    from loopline.offline.train import train_model
    from loopline.offline.transfer import load_source

    source = None
    if params.train.init_from:
        source = load_source(params.train.init_from, "", Path(params.train.init_from).parent)
    spec = task.fit_features(task.new_feature_spec(params), frame[frame["split"] == "train"])
    return train_model(task, frame, spec, dict(HPARAMS), params, source=source)


def one_seed(seed: int, label_counts: list[int | None], threads: int, out: Path) -> dict:
    import pandas as pd

    from loopline.offline.train import save_checkpoint
    from loopline.tasks.digits.task import DigitsTask

    task = DigitsTask()
    raw = task.load_builtin(None)
    test_ids = raw.groupby("label", group_keys=False).sample(frac=0.3, random_state=seed).index
    pool, test = raw.drop(test_ids), raw.loc[test_ids].assign(split="test")
    old_test = test[test["label"].isin(OLD)]
    new_test = test[test["label"].isin(NEW)]

    began = time.perf_counter()
    source_frame = with_split(pool[pool["label"].isin(OLD)], 0.2, seed)
    source, source_spec = train(task, source_frame, params_for(seed, threads))
    before = accuracy(task, source.model, old_test, source_spec)
    checkpoint = save_checkpoint(source, source_spec, out / f"source-seed{seed}.pt")
    log(f"seed {seed}: source on 0-4 test {before:.4f} ({time.perf_counter() - began:.0f} s)")

    rows = []
    for n in label_counts:
        labeled = with_split(per_class(pool[pool["label"].isin(NEW)], n, seed), 0.2, seed)
        frame = pd.concat([labeled, new_test])
        runs = {"scratch": params_for(seed, threads)}
        for mode in MODES:
            runs[mode] = params_for(seed, threads, str(checkpoint), mode)
        for name, params in runs.items():
            t0 = time.perf_counter()
            result, spec = train(task, frame, params)
            row = {
                "seed": seed,
                "labels_per_class": n or "all",
                "train_images": int((frame["split"] == "train").sum()),
                "method": name,
                "accuracy": accuracy(task, result.model, frame, spec),
                "epochs": len(result.history),
                "seconds": time.perf_counter() - t0,
            }
            if name != "scratch":
                # The fine-tuned conv blocks under the source's own 0-4 head.
                old_head = copy.deepcopy(result.model)
                old_head.head.load_state_dict(source.model.head.state_dict())
                row["old_task_before"] = before
                row["old_task_after"] = accuracy(task, old_head, old_test, source_spec)
            rows.append(row)
            log(
                f"  n={row['labels_per_class']:>3} {name:17s} acc {row['accuracy']:.4f}"
                + (
                    f"  0-4 {before:.3f}→{row['old_task_after']:.3f}"
                    if "old_task_after" in row
                    else ""
                )
                + f"  ({row['epochs']} epochs, {row['seconds']:.1f} s)"
            )
    return {"seed": seed, "source_old_task_accuracy": before, "rows": rows}


def summarise(rows: list[dict], key: str) -> dict[tuple, tuple[float, float]]:
    table: dict[tuple, list[float]] = {}
    for row in rows:
        if key in row:
            table.setdefault((row["labels_per_class"], row["method"]), []).append(row[key])
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in table.items()}


def markdown_table(methods: list[str], label_counts: list, cell) -> None:
    """One row per labels count, one column per method; `cell(n, method)` fills it."""
    print("| labels/class | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for n in label_counts:
        n = n or "all"
        print(f"| {n} | " + " | ".join(cell(n, m) for m in methods) + " |")


def print_tables(rows: list[dict], label_counts: list, seeds: list[int]) -> None:
    methods = ["scratch", *MODES]
    acc = summarise(rows, "accuracy")
    print(f"\nTest accuracy on digits 5-9 (mean ± sd over seeds {seeds})")
    markdown_table(
        methods, label_counts, lambda n, m: f"{acc[(n, m)][0]:.4f} ± {acc[(n, m)][1]:.4f}"
    )
    after = summarise(rows, "old_task_after")
    before = summarise(rows, "old_task_before")
    print("\nForgetting: digits 0-4 test accuracy, source model → fine-tuned encoder + old head")
    markdown_table(
        list(MODES), label_counts, lambda n, m: f"{before[(n, m)][0]:.4f} → {after[(n, m)][0]:.4f}"
    )
    print("\nPaired by seed: fine-tuned − scratch (mean, 95% CI, wins/seeds)")
    for n in label_counts:
        n = n or "all"
        cells = []
        for mode in MODES:
            diff = np.array(paired(rows, n, mode))
            half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
            cells.append(
                f"{mode} {diff.mean():+.4f} [{diff.mean() - half:+.4f}, {diff.mean() + half:+.4f}]"
                f" {int((diff > 0).sum())}/{len(diff)}"
            )
        print(f"  {n}: " + "; ".join(cells))


def paired(rows: list[dict], n, mode: str) -> list[float]:
    """Per seed, the mode's accuracy minus scratch's (same labels, same seed)."""
    by = {(r["seed"], r["method"]): r["accuracy"] for r in rows if r["labels_per_class"] == n}
    seeds = sorted({seed for seed, _ in by})
    return [by[(s, mode)] - by[(s, "scratch")] for s in seeds]


def plot(rows: list[dict], label_counts: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = summarise(rows, "accuracy")
    names = [str(n or "all") for n in label_counts]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in ["scratch", *MODES]:
        means = [acc[(n or "all", method)][0] for n in label_counts]
        sds = [acc[(n or "all", method)][1] for n in label_counts]
        style = "k--" if method == "scratch" else "-"
        left.errorbar(names, means, yerr=sds, fmt=style, marker="o", capsize=3, label=method)
    left.set_xlabel("labels per class (digits 5-9)")
    left.set_ylabel("test accuracy")
    left.set_title("Learning 5-9: fine-tuned from a 0-4 model vs scratch")
    left.legend()
    after = summarise(rows, "old_task_after")
    before = summarise(rows, "old_task_before")
    width = 0.8 / len(MODES)
    for i, method in enumerate(MODES):
        xs = np.arange(len(label_counts)) + i * width
        right.bar(xs, [after[(n or "all", method)][0] for n in label_counts], width, label=method)
    source = np.mean([before[(n or "all", MODES[0])][0] for n in label_counts])
    right.axhline(source, color="k", linestyle="--", label=f"source model {source:.3f}")
    right.set_xticks(np.arange(len(label_counts)) + 0.4 - width / 2, names)
    right.set_xlabel("labels per class (digits 5-9)")
    right.set_ylabel("0-4 test accuracy with the old head")
    right.set_title("Forgetting: the fine-tuned encoder on 0-4")
    lowest = min(after[(n or "all", m)][0] for n in label_counts for m in MODES)
    right.set_ylim(max(0.0, lowest - 0.05), 1.0)
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--labels", nargs="+", type=int, default=[10, 50, 0], help="0: all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--json", nargs="?", const="", default=None, help="write numbers")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-augment", action="store_true", help="no training augmentation")
    args = parser.parse_args()
    global AUGMENT
    AUGMENT = not args.no_augment
    args.out.mkdir(parents=True, exist_ok=True)
    label_counts = [n or None for n in args.labels]
    began = time.perf_counter()
    results = [one_seed(s, label_counts, args.threads, args.out) for s in args.seeds]
    rows = [row for result in results for row in result["rows"]]
    print_tables(rows, label_counts, args.seeds)
    figure = plot(rows, label_counts, args.out / "transfer.png")
    print(f"\nplot: {figure}\ntotal {time.perf_counter() - began:.0f} s on {platform.node()}")
    if args.json is not None:
        path = Path(args.json) if args.json else args.out / "transfer.json"
        path.write_text(json.dumps(results, indent=1, default=str))
        print(f"numbers: {path}")


if __name__ == "__main__":
    main()
