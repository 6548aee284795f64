"""Active learning: accuracy vs labels for each selection strategy against random selection.

Run: .venv/bin/python benchmarks/active_learning.py [--quick] [--seeds 0 1 2]
[--strategies random margin ...] [--data PATH] [--out DIR] [--json [PATH]]
(the full run, 5 strategies x 10 rounds on one seed, takes about 40 s on 2 cores, about
25 s more per extra seed; --quick is a smoke run on a 20,000-review subsample, 200 labels
+ 3 rounds of 200, about 5 s).

The human who labels is simulated with the held-out labels: the reviews (the shared
`reviews_dev.tsv`, never copied into the repository) are split movie-disjoint by
`loopline.offline.split.grouped_split` (80/10/10 by movie_id, split seed fixed by --split-seed);
the train part is the unlabeled pool, whose labels are revealed only for the rows a
strategy selects, and accuracy is measured on the test part (movies never seen in the
pool). For every seed, every strategy starts from the same 1,000 randomly drawn pool
rows; each round trains the learner on the labeled rows, scores test accuracy, then asks
`loopline.offline.active_learning.select` for the next 1,000 rows of the unlabeled pool, until
10,000 labels (rounds at 1k, 2k, ..., 10k). Strategies: random (the baseline),
least_confidence, margin, entropy (the learner's probabilities on the pool) and committee
(vote entropy of a committee of bootstrap-resampled learners: query by bagging). With two
classes, least_confidence, margin and entropy all rank by |p - 0.5| and, with the same
tie-break seed, pick the same rows: their columns are identical by construction.

The learner is the text baseline's (`loopline.tasks.text.baseline.train_text_baseline`): char_wb
(1-3)-gram TF-IDF (sublinear tf, min_df 2, 200,000 features) + logistic regression (C 4,
lbfgs, 1,000 iterations). For speed the TF-IDF vocabulary and idf weights are fitted ONCE
on all the pool's texts, which is unsupervised (no label is read) and what a team would do
with its unlabeled pool anyway; only the logistic regression is re-fitted each round. One
thread throughout (threadpoolctl limits BLAS / OpenMP to 1).

Prints one progress line per round per strategy on stderr, then the accuracy-vs-labels
table (mean over seeds when several) and, for each uncertainty strategy, the fewest labels
at which it reaches random selection's accuracy at the last round (10,000 labels). Writes
the plot to <out>/active_learning.png and, with --json, the numbers (no review text).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared/data/reviews_dev.tsv"
DEFAULT_OUT = Path("/tmp/loopline-bench/active_learning")
STRATEGIES = ("random", "least_confidence", "margin", "entropy", "committee")
# The baseline's learner (loopline.tasks.text.baseline.train_text_baseline),
# kept in step by hand.
VECTORIZER = {
    "analyzer": "char_wb",
    "ngram_range": (1, 3),
    "max_features": 200_000,
    "sublinear_tf": True,
    "min_df": 2,
}
C, MAX_ITER = 4.0, 1000
FULL = {"initial": 1000, "step": 1000, "rounds": 9, "sample": None}
QUICK = {"initial": 200, "step": 200, "rounds": 3, "sample": 20_000}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_reviews(path: Path, sample: int | None, seed: int):
    """The reviews with a non-empty document (read as the library's ingest reads TSV), and
    how many were dropped for an empty or missing one."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=True)
    text = frame["document"].fillna("").str.strip()
    keep = text != ""
    frame = frame[keep].reset_index(drop=True)
    frame["label"] = frame["label"].astype(int)
    if sample is not None and sample < len(frame):
        frame = frame.sample(n=sample, random_state=seed).reset_index(drop=True)
    return frame, int((~keep).sum())


def learner(seed: int):
    from sklearn.linear_model import LogisticRegression

    # No n_jobs: it has no effect on lbfgs since sklearn 1.8; threads are limited in main.
    return LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed)


def fit(x, y, seed: int):
    return learner(seed).fit(x, y)


def bootstrap(rows: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bootstrap resample of `rows` (positions into the pool) holding both labels."""
    while True:
        picked = rng.choice(rows, size=len(rows), replace=True)
        if len(np.unique(labels[picked])) > 1:
            return picked


def run_strategy(
    strategy: str,
    seed: int,
    x_pool,
    y_pool: np.ndarray,
    x_test,
    y_test: np.ndarray,
    schedule: list[int],
    committee_size: int,
    started: float,
) -> list[dict]:
    """One strategy's rounds on one seed: accuracy on the test split at each labels count."""
    from loopline.offline.active_learning import select

    n_pool = len(y_pool)
    labeled = np.zeros(n_pool, dtype=bool)
    # The same seed gives every strategy the same initial labeled rows.
    labeled[np.random.default_rng(seed).choice(n_pool, size=schedule[0], replace=False)] = True
    rounds = []
    for r, labels in enumerate(schedule):
        round_started = time.perf_counter()
        rows = np.flatnonzero(labeled)
        assert len(rows) == labels, (len(rows), labels)
        model = fit(x_pool[rows], y_pool[rows], seed)
        accuracy = float((model.predict(x_test) == y_test).mean())
        fit_s = time.perf_counter() - round_started
        record = {"labels": labels, "accuracy": accuracy, "fit_s": fit_s, "select_s": 0.0}
        if r + 1 < len(schedule):
            select_started = time.perf_counter()
            n = schedule[r + 1] - labels
            unlabeled = np.flatnonzero(~labeled)
            round_seed = seed * 10_000 + r  # ties (and random) in a seeded order
            if strategy == "random":
                picks = select("random", n, pool_size=len(unlabeled), seed=round_seed)
            elif strategy == "committee":
                rng = np.random.default_rng([seed, r])
                members = []
                for m in range(committee_size):
                    resample = bootstrap(rows, y_pool, rng)
                    member = fit(x_pool[resample], y_pool[resample], seed * 100 + m)
                    members.append(member.predict_proba(x_pool)[unlabeled])
                picks = select("committee", n, committee=np.stack(members), seed=round_seed)
            else:
                probabilities = model.predict_proba(x_pool)[unlabeled]
                picks = select(strategy, n, probabilities=probabilities, seed=round_seed)
            labeled[unlabeled[picks]] = True
            record["select_s"] = time.perf_counter() - select_started
            record["selected_positive_share"] = float(y_pool[unlabeled[picks]].mean())
        rounds.append(record)
        log(
            f"seed {seed} {strategy:16s} {labels:6d} labels  accuracy {accuracy:.4f}  "
            f"fit {fit_s:5.1f}s select {record['select_s']:5.1f}s  "
            f"elapsed {time.perf_counter() - started:7.1f}s"
        )
    return rounds


def labels_needed(curve: list[float], schedule: list[int], target: float) -> int | None:
    """The fewest labels (on the schedule) at which `curve` reaches `target`."""
    for labels, accuracy in zip(schedule, curve, strict=True):
        if accuracy >= target:
            return labels
    return None


def print_table(schedule: list[int], strategies: list[str], mean: dict, n_seeds: int) -> None:
    print()
    what = f"mean of {n_seeds} seeds" if n_seeds > 1 else "1 seed"
    print(f"test accuracy vs labels ({what})")
    print(f"{'labels':>7s}  " + "  ".join(f"{s:>16s}" for s in strategies))
    for i, labels in enumerate(schedule):
        print(f"{labels:7d}  " + "  ".join(f"{mean[s][i]:16.4f}" for s in strategies))


def plot(schedule: list[int], strategies: list[str], mean: dict, target, path: Path) -> Path:
    from loopline.plots import new_figure, save_figure

    fig, ax = new_figure((7, 4.5))
    # Distinct markers and widths: with two classes three of the lines coincide.
    for n, strategy in enumerate(strategies):
        ax.plot(
            schedule,
            mean[strategy],
            "--" if strategy == "random" else "-",
            marker="os^vD"[n % 5],
            markersize=7 - n,
            linewidth=max(3.0 - 0.5 * n, 1.0),
            alpha=0.85,
            label=strategy,
        )
    if target is not None:
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label="random, last round")
    ax.set_xlabel("labeled reviews")
    ax.set_ylabel("test accuracy (movie-disjoint)")
    ax.set_title("Active learning: accuracy vs labels")
    ax.grid(alpha=0.3)
    return save_figure(fig, ax, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (subsample)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="reviews TSV")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the plot")
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        metavar="PATH",
        help="also write the numbers (to <out>/active_learning.json, or to PATH)",
    )
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--split-seed", type=int, default=0, help="the movie-disjoint split's")
    parser.add_argument("--initial", type=int, help="labels before the first round")
    parser.add_argument("--step", type=int, help="labels added per round")
    parser.add_argument("--rounds", type=int, help="rounds of selection")
    parser.add_argument("--sample", type=int, help="use only this many reviews (random)")
    parser.add_argument("--committee-size", type=int, default=5)
    args = parser.parse_args()
    config = dict(QUICK if args.quick else FULL)
    for key in config:
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    schedule = [config["initial"] + config["step"] * r for r in range(config["rounds"] + 1)]
    strategies = list(dict.fromkeys(args.strategies))
    if args.committee_size < 2 and "committee" in strategies:
        parser.error("--committee-size must be at least 2")
    if not args.data.exists():
        parser.error(f"no data at {args.data}")
    total_started = time.perf_counter()

    sys.path.insert(0, str(REPO / "src"))
    import sklearn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from threadpoolctl import threadpool_limits

    from loopline.config import SplitParams
    from loopline.offline.split import grouped_split

    threadpool_limits(1)  # BLAS / OpenMP: 2 cores shared with other work
    frame, dropped = load_reviews(args.data, config["sample"], args.split_seed)
    split = grouped_split(frame, SplitParams(), "movie_id", f"split-{args.split_seed}")
    pool, test = split[split["split"] == "train"], split[split["split"] == "test"]
    if schedule[-1] > len(pool):
        parser.error(f"{schedule[-1]} labels asked for, the pool holds {len(pool)} reviews")
    log(
        f"{len(frame)} reviews ({dropped} dropped: empty document); pool {len(pool)} reviews "
        f"of {pool['movie_id'].nunique()} movies, test {len(test)} of "
        f"{test['movie_id'].nunique()} movies (val {int((split['split'] == 'val').sum())} unused)"
    )
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(**VECTORIZER).fit(pool["document"].tolist())
    x_pool = vectorizer.transform(pool["document"].tolist()).tocsr()
    x_test = vectorizer.transform(test["document"].tolist()).tocsr()
    y_pool, y_test = pool["label"].to_numpy(), test["label"].to_numpy()
    vectorize_s = time.perf_counter() - started
    log(
        f"TF-IDF fitted on the pool's texts (no labels): {x_pool.shape[1]} features, "
        f"{vectorize_s:.1f}s"
    )
    del frame, split, pool, test  # no review text is kept past this point

    started = time.perf_counter()
    results: dict[str, dict[int, list[dict]]] = {s: {} for s in strategies}
    for seed in args.seeds:
        for strategy in strategies:
            results[strategy][seed] = run_strategy(
                strategy,
                seed,
                x_pool,
                y_pool,
                x_test,
                y_test,
                schedule,
                args.committee_size,
                started,
            )
    rounds_s = time.perf_counter() - started

    mean = {
        s: [
            float(np.mean([results[s][seed][i]["accuracy"] for seed in args.seeds]))
            for i in range(len(schedule))
        ]
        for s in strategies
    }
    print_table(schedule, strategies, mean, len(args.seeds))
    target = mean["random"][-1] if "random" in strategies else None
    needed = {}
    print()
    if target is None:
        print("random is not among --strategies: no labels-needed comparison")
    else:
        for strategy in strategies:
            if strategy == "random":
                continue
            n = labels_needed(mean[strategy], schedule, target)
            needed[strategy] = n
            per_seed = [
                labels_needed(
                    [x["accuracy"] for x in results[strategy][seed]],
                    schedule,
                    results["random"][seed][-1]["accuracy"],
                )
                for seed in args.seeds
            ]
            seeds_note = (
                f" (per seed: {', '.join(str(p) if p else '-' for p in per_seed)})"
                if len(args.seeds) > 1
                else ""
            )
            print(
                f"{strategy}: labels needed to reach random's {schedule[-1]:,}-label accuracy "
                f"({target:.4f}): {f'{n:,}' if n else 'not reached'}{seeds_note}"
            )
        uncertainty = {s: n for s, n in needed.items() if n is not None}
        goal = int(schedule[-1] * 0.7)
        best = min(uncertainty.values(), default=None)
        verdict = "PASS" if best is not None and best <= goal else "MISS"
        print(
            f"target: an uncertainty strategy reaches it with <= {goal:,} labels: {verdict} "
            f"(best: {f'{best:,}' if best else 'not reached'})"
        )
    png = plot(schedule, strategies, mean, target, args.out / "active_learning.png")
    total_s = time.perf_counter() - total_started
    print(f"plot: {png}")
    print(
        f"setup: {len(y_pool)} pool / {len(y_test)} test reviews (movie-disjoint, split seed "
        f"{args.split_seed}); {dropped} dropped for an empty document; seeds {args.seeds}; "
        f"committee of {args.committee_size} bootstrap learners; TF-IDF {vectorize_s:.0f}s, "
        f"rounds {rounds_s:.0f}s, {total_s:.0f}s in all; sklearn {sklearn.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} cores, 1 thread; "
        f"{'quick' if args.quick else 'full'} run"
    )
    if args.json is not None:
        path = Path(args.json) if args.json else args.out / "active_learning.json"
        summary = {
            "config": {
                **config,
                "quick": args.quick,
                "schedule": schedule,
                "strategies": strategies,
                "seeds": args.seeds,
                "split_seed": args.split_seed,
                "committee_size": args.committee_size,
                "vectorizer": {**VECTORIZER, "ngram_range": list(VECTORIZER["ngram_range"])},
                "logistic_regression": {"C": C, "max_iter": MAX_ITER},
                "data": str(args.data),
                "dropped_empty": dropped,
                "pool_size": len(y_pool),
                "test_size": len(y_test),
                "features": x_pool.shape[1],
                "cores": os.cpu_count(),
            },
            "mean_accuracy": mean,
            "random_last_accuracy": target,
            "labels_needed": needed,
            "per_seed": {s: {str(k): v for k, v in results[s].items()} for s in strategies},
            "seconds": {"vectorize": vectorize_s, "rounds": rounds_s, "total": total_s},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
