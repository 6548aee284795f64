"""The paired gate beside the point rule: how often each promotes a candidate that is no
better than the champion (equal quality, another seed; target <= alpha) and how often it
promotes one that truly is better (power), decided on the same pairs.

Run: .venv/bin/python benchmarks/gate.py [--reviews ../shared/data/reviews_dev.tsv]
[--quick] [--alpha 0.05]

Two families, each with cheap models so that one run takes a few minutes on 2 cores:
- reviews (accuracy, exact McNemar): character n-gram logistic regressions (averaged SGD)
  trained on the same rows with different seeds; the better candidate learns from twice
  the rows. A third group, plain (unaveraged) SGD stopped after 3 epochs, shows seeds that
  really differ (their sd is printed): there the paired gate promotes the luckier seed,
  rightly so on these rows. Decided on disjoint test sets of 5,000 rows each.
- solar (RMSE, Diebold-Mariano): ridge forecasters of the built-in solar data (day-ahead
  windows at every hour, horizon 24) on the last 48 readings, each fitted on a bootstrap of
  the training windows drawn by its seed; the better candidate also reads the next day's
  clear-sky power, the slightly better one blends 2% of that candidate into a champion-like
  forecast. Decided on disjoint test periods of the held-out 40% of the year.

Every model of a group is compared with every other of the other group on each test set,
in both orders for equal pairs (so the point rule promotes about half). Pairs share models
and test sets, so they are not independent: the intervals printed (Wilson, 95%) are
indicative. The bootstrap interval beside each test uses --resamples resamples; it does not
change the decision.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from loopline.evaluate import score, score_classes, should_promote  # noqa: E402
from loopline.gate import Paired  # noqa: E402


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rates(pairs, metric: str, higher: bool, rule: Paired) -> dict[str, tuple[int, int]]:
    """Promotions by the point and the paired rule over (candidate, champion, baselines)."""
    counts = {"point": 0, "paired": 0}
    for candidate, champion, baselines in pairs:
        kwargs = {"metric": metric, "higher_is_better": higher}
        counts["point"] += should_promote(candidate, champion, baselines, **kwargs).promote
        counts["paired"] += should_promote(
            candidate, champion, baselines, paired=rule, **kwargs
        ).promote
    return {name: (k, len(pairs)) for name, k in counts.items()}


def all_pairs(candidates, champions, test_sets: int, ordered_within: bool):
    """(candidate, champion, test set) indices: every candidate against every champion."""
    if ordered_within:  # equal quality: every ordered pair of distinct models
        combos = [(i, j) for i, j in itertools.permutations(range(len(candidates)), 2)]
    else:
        combos = list(itertools.product(range(len(candidates)), range(len(champions))))
    return [(i, j, t) for i, j in combos for t in range(test_sets)]


# ---------------------------------------------------------------------- reviews


def reviews(path: Path, seeds: int, test_sets: int, train_rows: int, rule: Paired):
    import pandas as pd
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import SGDClassifier

    frame = pd.read_csv(path, sep="\t", usecols=["document", "label"]).dropna()
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    test_rows = 5000 * test_sets
    vectorizer = HashingVectorizer(
        analyzer="char_wb", ngram_range=(1, 3), n_features=2**18, alternate_sign=False
    )
    x = vectorizer.transform(frame["document"].iloc[: test_rows + 2 * train_rows])
    y = frame["label"].to_numpy()[: test_rows + 2 * train_rows].astype(np.int64)
    x_test, y_test = x[:test_rows], y[:test_rows]
    x_train, y_train = x[test_rows:], y[test_rows:]

    def fit(seed: int, rows: int, average: bool = True):
        model = SGDClassifier(
            loss="log_loss", alpha=2e-6, max_iter=3, tol=None, average=average, random_state=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train[:rows], y_train[:rows])
        probabilities = model.predict_proba(x_test)
        return [score_classes(y_test[part], probabilities[part]) for part in parts]

    parts = [slice(t * 5000, (t + 1) * 5000) for t in range(test_sets)]
    base = [fit(seed, train_rows) for seed in range(seeds)]
    better = [fit(100 + seed, 2 * train_rows) for seed in range(seeds)]
    noisy = [fit(200 + seed, train_rows, average=False) for seed in range(seeds)]
    majority = [score_classes(y_test[part], np.tile([0.0, 1.0], (5000, 1))) for part in parts]

    def pairs(candidates, champions, ordered_within):
        return [
            (candidates[i][t], champions[j][t], {"majority": majority[t]})
            for i, j, t in all_pairs(candidates, champions, test_sets, ordered_within)
        ]

    quality = {
        "champions (averaged SGD)": np.mean([s.accuracy for m in base for s in m]),
        "better (2x rows)": np.mean([s.accuracy for m in better for s in m]),
        "plain SGD": np.mean([s.accuracy for m in noisy for s in m]),
        "plain SGD, sd over seeds": np.std([m[0].accuracy for m in noisy]),
    }
    return {
        "equal quality (false promotion)": rates(pairs(base, base, True), "accuracy", True, rule),
        "plain SGD (seeds really differ)": rates(pairs(noisy, noisy, True), "accuracy", True, rule),
        "2x training rows (power)": rates(pairs(better, base, False), "accuracy", True, rule),
    }, quality


# ---------------------------------------------------------------------- solar


def solar_windows(lags: int = 48, horizon: int = 24):
    """Per built-in site, day-ahead windows at every hour: the last `lags` readings, the
    clear-sky power of the next `horizon` steps, and the next `horizon` readings, in time
    order (consecutive windows overlap, as in the task's own test split)."""
    import pandas as pd

    from loopline.config import parse_params
    from loopline.tasks.solar.task import clearsky_power

    params = parse_params({"task": "solar"})
    frame = params.plugin.load_builtin(params)
    out = []
    for site in params.solar.sites:
        rows = frame[frame["site_id"] == site.name].sort_values("timestamp")
        power = rows["power_w"].to_numpy(np.float64)
        sky = clearsky_power(pd.DatetimeIndex(rows["timestamp"]), site.location(), site.system)
        origins = np.arange(lags, len(power) - horizon + 1)
        past = np.stack([power[o - lags : o] for o in origins])
        ahead = np.stack([sky[o : o + horizon] for o in origins])
        target = np.stack([power[o : o + horizon] for o in origins])
        out.append((past, ahead, target))
    return out


def solar(seeds: int, test_sets: int, rule: Paired):
    """Ridge forecasters fitted on a bootstrap of the training windows (the seed draws it):
    the equal ones on the past readings, the better ones also on next day's clear sky."""
    from sklearn.linear_model import Ridge

    sites = solar_windows()
    train, tests = [], [[] for _ in range(test_sets)]
    for past, ahead, target in sites:
        cut = int(len(target) * 0.6)  # the first 60% of the year trains, the rest tests
        train.append((past[:cut], ahead[:cut], target[:cut]))
        # Test periods apart by a day so no two share a target reading.
        for t, part in enumerate(np.array_split(np.arange(cut + 24, len(target)), test_sets)):
            tests[t].append((past[part[:-24]], ahead[part[:-24]], target[part[:-24]]))
    past, ahead, target = (np.concatenate(parts) for parts in zip(*train, strict=True))

    def fit(seed: int, sky: float):
        """Lags-only forecasts blended with `sky` of a lags + clear-sky model's."""
        rows = np.random.default_rng(seed).integers(0, len(target), len(target))
        lags = Ridge(alpha=1.0).fit(past[rows], target[rows])
        both = Ridge(alpha=1.0).fit(np.hstack([past, ahead])[rows], target[rows]) if sky else None
        scored = []
        for test in tests:
            p, a, y = (np.concatenate(parts) for parts in zip(*test, strict=True))
            forecast = lags.predict(p)
            if both is not None:
                forecast = (1 - sky) * forecast + sky * both.predict(np.hstack([p, a]))
            scored.append(score(y, np.clip(forecast, 0, None)))
        return scored

    def persistence(test):
        p, _, y = (np.concatenate(parts) for parts in zip(*test, strict=True))
        return score(y, p[:, -24:])  # the same hour yesterday

    base = [fit(seed, 0.0) for seed in range(seeds)]
    better = [fit(100 + seed, 1.0) for seed in range(seeds)]
    slightly = [fit(200 + seed, 0.02) for seed in range(seeds)]
    naive = [persistence(test) for test in tests]

    def pairs(candidates, champions, ordered_within):
        return [
            (candidates[i][t], champions[j][t], {"persistence": naive[t]})
            for i, j, t in all_pairs(candidates, champions, test_sets, ordered_within)
        ]

    quality = {
        "champions (lags)": np.mean([s.rmse for m in base for s in m]),
        "better (+ clear sky)": np.mean([s.rmse for m in better for s in m]),
        "slightly better (2% blend of it)": np.mean([s.rmse for m in slightly for s in m]),
        "persistence": np.mean([s.rmse for s in naive]),
    }
    return {
        "equal quality (false promotion)": rates(pairs(base, base, True), "rmse", False, rule),
        "+ clear-sky inputs (power)": rates(pairs(better, base, False), "rmse", False, rule),
        "2% blend of it (power)": rates(pairs(slightly, base, False), "rmse", False, rule),
    }, quality


# ---------------------------------------------------------------------- report


def line(name: str, counts: dict[str, tuple[int, int]]) -> str:
    cells = []
    for rule in ("point", "paired"):
        k, n = counts[rule]
        low, high = wilson(k, n)
        cells.append(f"{k / n:6.3f} [{low:.3f}, {high:.3f}]")
    return f"{name:34s} {cells[0]:>24s} {cells[1]:>24s} {counts['point'][1]:>6d}"


def table(title: str, found: dict, quality: dict) -> None:
    print(f"\n{title}")
    for name, value in quality.items():
        print(f"  {name}: {value:.4g}")
    print(HEADER)
    for name, counts in found.items():
        print(line(name, counts))


HEADER = f"{'pairs':34s} {'point: rate [95% CI]':>24s} {'paired: rate [95% CI]':>24s} {'n':>6s}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=Path, default=REPO.parent / "shared/data/reviews_dev.tsv")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--resamples", type=int, default=199)
    parser.add_argument("--seeds", type=int, default=10, help="models per group")
    parser.add_argument("--test-sets", type=int, default=6)
    parser.add_argument("--train-rows", type=int, default=15_000)
    parser.add_argument("--quick", action="store_true", help="4 models, 2 test sets")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.test_sets = 4, 2
    rule = Paired(args.alpha, args.seed, args.resamples)
    started = time.perf_counter()
    print(
        f"paired gate vs point rule, alpha {args.alpha}; {args.seeds} models per group, "
        f"{args.test_sets} disjoint test sets"
    )
    if args.reviews.exists():
        found, quality = reviews(args.reviews, args.seeds, args.test_sets, args.train_rows, rule)
        table("reviews: accuracy, exact McNemar; 5,000 test rows per set", found, quality)
    else:
        print(f"\n{args.reviews} not found: reviews skipped")
    found, quality = solar(args.seeds, args.test_sets, rule)
    table("solar: RMSE, Diebold-Mariano (horizon 24); ~1,300 windows per set", found, quality)
    print(f"\ntook {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
