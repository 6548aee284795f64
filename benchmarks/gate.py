"""The paired gate's size and power on every family: how often it promotes a candidate of
exactly the champion's quality (target: at most alpha) and how often one that truly is better.

Run: .venv/bin/python benchmarks/gate.py [--reviews ../shared/data/reviews_dev.tsv]
[--quick] [--alpha 0.05] [--reps 400] [--json PATH]

"Equal quality" is the gate's null hypothesis: the two models it compares have the same
expected loss on the population the test rows come from. Two retrains of one learner do not
meet it: each pair has its own small, real gap, and a conditional test rightly finds it on
enough rows (their rate, beside, is above alpha by design). So each repetition builds a tie:
- rows drawn independently (text, image, tabular): two models of one learner trained on
  disjoint, equal halves; the population is the rows neither trained on, exponentially tilted
  on the pair's loss difference to the nearest distribution (in Kullback-Leibler divergence)
  on which the two tie exactly (for accuracy: the discordant rows the better one wins are
  down-weighted); the test rows are drawn from it independently, with replacement;
- forecasts (rows in time order, overlapping windows): one ridge forecaster (lags + next
  day's clear-sky power) read through two independent, equally noisy next-day input feeds
  (an AR(1) error per target hour, shared by every window that reads that hour), so the
  pair is exchangeable given the data and the loss differential has mean zero, with the
  overlap's autocorrelation; a random 30-day period of the held-out part of each site.
Power: a truly better candidate on untilted rows: twice (four times for tabular) the
training rows, or, for forecasts, a feed with half the noise.

Every repetition has its own training rows, models, feed noise and test rows (random, seeded
per repetition), so the repetitions are independent given the data sets, and the rate's
Wilson 95 % interval is valid. A cell passes when the equal-quality rate is <= alpha and its
upper bound <= 2 alpha. Families: forecast (solar builtin data, RMSE, Diebold-Mariano over
24-step windows), text (reviews, accuracy, exact McNemar; needs --reviews), image (sklearn's
digits, accuracy), tabular classification (accuracy) and regression (RMSE, Diebold-Mariano at
horizon 1: the paired t-test) on synthetic tables made here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from loopline.offline.evaluate import ClassScores, score, score_classes, should_promote  # noqa: E402
from loopline.offline.gate import Paired, RowOutcomes, _f1  # noqa: E402

CELLS = ("equal", "power", "retrains")
MIN_REPS = 400  # fewer cannot bound a rate of alpha = 0.05 at 2 alpha (Wilson, 5/100: 0.11)


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score 95 % interval of k successes in n trials (scipy's)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    interval = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass
class Family:
    """Promotions per cell over the repetitions, and what each cell compared."""

    name: str
    test: str
    rows: int
    counts: dict[str, list[int]] = field(default_factory=lambda: {c: [0, 0] for c in CELLS})
    point_equal: list[int] = field(default_factory=lambda: [0, 0])
    # Equal-quality candidates that beat every baseline: the champion test alone decides.
    beat_baselines: list[int] = field(default_factory=lambda: [0, 0])
    gaps: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CELLS})
    seconds: float = 0.0

    def add(self, cell: str, promoted: bool, gap: float | None = None) -> None:
        self.counts[cell][0] += int(promoted)
        self.counts[cell][1] += 1
        if gap is not None:
            self.gaps[cell].append(float(gap))

    def cell(self, name: str) -> dict:
        k, n = self.counts[name]
        low, high = wilson(k, n)
        out = {"promoted": k, "reps": n, "rate": k / n if n else float("nan")}
        out.update(low=low, high=high)
        if self.gaps[name]:
            out["mean_population_gap"] = float(np.mean(self.gaps[name]))
            out["mean_abs_population_gap"] = float(np.mean(np.abs(self.gaps[name])))
        return out

    def passed(self, alpha: float) -> bool | None:
        """Rate <= alpha and its upper bound <= 2 alpha; None (no verdict) under MIN_REPS
        repetitions, too few to bound the rate at 2 alpha."""
        equal = self.cell("equal")
        if equal["reps"] < MIN_REPS:
            return None
        return bool(equal["rate"] <= alpha and equal["high"] <= 2 * alpha)

    def to_dict(self, alpha: float) -> dict:
        k, n = self.point_equal
        return {
            "test": self.test,
            "test_rows": self.rows,
            **{c: self.cell(c) for c in CELLS},
            "point_rule_equal_rate": k / n if n else float("nan"),
            "equal_beat_baselines": self.beat_baselines[0] / max(self.beat_baselines[1], 1),
            "pass": self.passed(alpha),
            "seconds": round(self.seconds, 1),
        }


def class_scores(labels: np.ndarray, probabilities: np.ndarray) -> ClassScores:
    """`evaluate.score_classes` without sklearn's input checks (25 ms a call): the same
    figures (checked against it on the first repetition of each family)."""
    p = probabilities / probabilities.sum(axis=1, keepdims=True)
    predicted, classes = p.argmax(axis=1), p.shape[1]
    losses = -np.log(np.clip(p[np.arange(len(labels)), labels], 1e-15, 1.0))
    f1 = float(_f1(labels, predicted, classes))
    return ClassScores(
        accuracy=float((predicted == labels).mean()),
        f1=f1,
        log_loss=float(losses.mean()),
        rows=len(labels),
        macro_f1=f1 if classes > 2 else None,
        per_row=RowOutcomes(labels, predicted, losses, classes),
    )


def decide(candidate, champion, baselines, metric: str, higher: bool, rule: Paired):
    """(paired gate promotes, point rule promotes, the candidate beats every baseline)."""
    kwargs = {"metric": metric, "higher_is_better": higher}
    paired = should_promote(candidate, champion, baselines, paired=rule, **kwargs).promote
    point = should_promote(candidate, champion, baselines, **kwargs).promote
    first = should_promote(candidate, None, baselines, **kwargs).promote
    return paired, point, first


def record(family: Family, cell: str, decision, gap: float) -> None:
    paired, point, first = decision
    family.add(cell, paired, gap)
    if cell == "equal":
        family.point_equal[0] += int(point)
        family.point_equal[1] += 1
        family.beat_baselines[0] += int(first)
        family.beat_baselines[1] += 1


def tilt(difference: np.ndarray) -> np.ndarray | None:
    """Weights w_i proportional to exp(theta d_i) with sum_i w_i d_i = 0: the distribution
    nearest (Kullback-Leibler) to the rows' on which the loss difference d has mean zero;
    None when d never changes sign (no tie to tilt to)."""
    from scipy.optimize import brentq

    d = np.asarray(difference, np.float64)
    if not (d.min() < 0 < d.max()):
        return None
    d = d / np.abs(d).max()

    def moment(theta: float) -> float:
        e = theta * d
        return float(np.sum(d * np.exp(e - e.max())))

    theta = brentq(moment, -50.0, 50.0, xtol=1e-12)
    w = np.exp(theta * d - (theta * d).max())
    return w / w.sum()


def classifier_cells(family, rng, probs_a, probs_b, probs_c, labels, n_test, rule, baseline):
    """The three decisions of a classification repetition on the pool's rows: A vs B on
    the tie (tilted rows), C (more rows) vs B and A vs B on untilted rows."""
    right_a = probs_a.argmax(1) == labels
    right_b = probs_b.argmax(1) == labels
    weights = tilt(right_b.astype(float) - right_a.astype(float))  # loss_A - loss_B
    tied = rng.choice(len(labels), n_test, replace=True, p=weights)
    plain = rng.choice(len(labels), n_test, replace=True)

    def scores(probs, rows):
        return class_scores(labels[rows], probs[rows])

    if not family.counts["equal"][1]:  # the fast scores are score_classes' own
        fast, slow = scores(probs_a, tied), score_classes(labels[tied], probs_a[tied])
        assert pytest_approx(fast.to_dict()) == pytest_approx(slow.to_dict()), (fast, slow)

    majority = np.tile(baseline, (len(labels), 1))
    for cell, (cand, champ), rows in (
        ("equal", (probs_a, probs_b), tied),
        ("power", (probs_c, probs_b), plain),
        ("retrains", (probs_a, probs_b), plain),
    ):
        decision = decide(
            scores(cand, rows),
            scores(champ, rows),
            {"majority": scores(majority, rows)},
            "accuracy",
            True,
            rule,
        )
        gap = np.mean(cand.argmax(1) == labels) - np.mean(champ.argmax(1) == labels)
        record(family, cell, decision, 0.0 if cell == "equal" else gap)


def pytest_approx(figures: dict) -> dict:
    """Figures rounded to 9 digits, for comparing two ways of computing them."""
    return {k: round(v, 9) if isinstance(v, float) else v for k, v in figures.items()}


def quiet_fit(model, x, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


# ---------------------------------------------------------------------- text


def text(path: Path, reps: int, rule: Paired, seed: int, quick: bool) -> Family:
    """Reviews: character n-gram logistic regressions (averaged SGD, 3 epochs) on `half`
    rows each; the better candidate learns from both halves."""
    import pandas as pd
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import SGDClassifier

    half, pool, n_test = (4_000, 10_000, 2_000) if quick else (10_000, 20_000, 5_000)
    family = Family("text (reviews)", "accuracy, exact McNemar", n_test)
    frame = pd.read_csv(path, sep="\t", usecols=["document", "label"]).dropna()
    frame = frame.sample(n=min(len(frame), 60_000 if quick else len(frame)), random_state=seed)
    vectorizer = HashingVectorizer(
        analyzer="char_wb", ngram_range=(1, 3), n_features=2**18, alternate_sign=False
    )
    x = vectorizer.transform(frame["document"]).tocsr()
    y = frame["label"].to_numpy().astype(np.int64)
    prior = np.bincount(y, minlength=2) / len(y)
    baseline = np.eye(2)[prior.argmax()]

    def fit(rows, state):
        model = SGDClassifier(
            loss="log_loss", alpha=2e-6, max_iter=3, tol=None, average=True, random_state=state
        )
        return quiet_fit(model, x[rows], y[rows])

    for rep in range(reps):
        rng = np.random.default_rng([seed, 1, rep])
        order = rng.permutation(len(y))
        a_rows, b_rows, rest = order[:half], order[half : 2 * half], order[2 * half :]
        test_pool = rest[:pool]
        states = rng.integers(0, 2**31, 3)
        models = fit(a_rows, states[0]), fit(b_rows, states[1]), fit(order[: 2 * half], states[2])
        xp = x[test_pool]
        probs = [m.predict_proba(xp) for m in models]
        classifier_cells(family, rng, *probs, y[test_pool], n_test, rule, baseline)
    return family


# ---------------------------------------------------------------------- image


def image(reps: int, rule: Paired, seed: int, quick: bool) -> Family:
    """sklearn's digits (8x8): logistic regression on the pixels, 150 rows per half."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    half, n_test = 150, 500
    family = Family("image (digits)", "accuracy, exact McNemar", n_test)
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    baseline = np.eye(10)[np.bincount(y).argmax()]

    def fit(rows):
        return quiet_fit(LogisticRegression(C=1.0, max_iter=100), x[rows], y[rows])

    for rep in range(reps):
        rng = np.random.default_rng([seed, 2, rep])
        order = rng.permutation(len(y))
        pool = order[2 * half :]
        models = fit(order[:half]), fit(order[half : 2 * half]), fit(order[: 2 * half])
        probs = [m.predict_proba(x[pool]) for m in models]
        classifier_cells(family, rng, *probs, y[pool], n_test, rule, baseline)
    return family


# ---------------------------------------------------------------------- tabular


def table_rows(rng, n: int, regression: bool, truth: np.ndarray):
    """A synthetic table: 20 numeric features (correlated pairs), the target from a linear
    part, an interaction and a sine; for classification a logistic draw of it."""
    z = rng.standard_normal((n, 20))
    x = z.copy()
    x[:, 1::2] = 0.6 * z[:, ::2] + 0.8 * z[:, 1::2]
    signal = x @ truth + 0.8 * x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2])
    if regression:
        return x, signal + rng.standard_normal(n) * 1.5
    return x, (rng.random(n) < 1 / (1 + np.exp(-signal))).astype(np.int64)


def tabular(reps: int, rule: Paired, seed: int, quick: bool, regression: bool) -> Family:
    """Logistic (classification) or ridge (regression) models on `half` rows each, the
    better candidate on four times as many; test rows from a fresh table per repetition."""
    from sklearn.linear_model import LogisticRegression, Ridge

    half, pool, n_test = 200, 20_000, 2_000
    if regression:
        family = Family("tabular regression", "RMSE, Diebold-Mariano h=1 (paired t)", n_test)
    else:
        family = Family("tabular classification", "accuracy, exact McNemar", n_test)
    truth = np.random.default_rng([seed, 3]).normal(0, 0.5, 20)

    for rep in range(reps):
        rng = np.random.default_rng([seed, 4 + regression, rep])
        x, y = table_rows(rng, 4 * half + pool, regression, truth)
        x_pool, y_pool = x[4 * half :], y[4 * half :]
        parts = (slice(0, half), slice(half, 2 * half), slice(0, 4 * half))
        if not regression:
            models = [quiet_fit(LogisticRegression(C=1.0), x[p], y[p]) for p in parts]
            probs = [m.predict_proba(x_pool) for m in models]
            baseline = np.eye(2)[int(y[: 2 * half].mean() > 0.5)]
            classifier_cells(family, rng, *probs, y_pool, n_test, rule, baseline)
            continue
        forecasts = [Ridge(alpha=1.0).fit(x[p], y[p]).predict(x_pool) for p in parts]
        losses = [(f - y_pool) ** 2 for f in forecasts]
        weights = tilt(losses[0] - losses[1])
        tied = rng.choice(pool, n_test, replace=True, p=weights)
        plain = rng.choice(pool, n_test, replace=True)
        mean = np.full(pool, y[: 2 * half].mean())
        for cell, (cand, champ), rows in (
            ("equal", (0, 1), tied),
            ("power", (2, 1), plain),
            ("retrains", (0, 1), plain),
        ):
            truth_rows = y_pool[rows].reshape(-1, 1)

            def scored(f, rows=rows, truth_rows=truth_rows):
                return score(truth_rows, f[rows].reshape(-1, 1))

            decision = decide(
                scored(forecasts[cand]),
                scored(forecasts[champ]),
                {"training_mean": scored(mean)},
                "rmse",
                False,
                rule,
            )
            gap = np.sqrt(losses[cand].mean()) - np.sqrt(losses[champ].mean())
            record(family, cell, decision, 0.0 if cell == "equal" else gap)
    return family


# ---------------------------------------------------------------------- forecast


def solar_windows(lags: int = 48, horizon: int = 24):
    """Per built-in site, day-ahead windows at every hour: the last `lags` readings, the
    clear-sky power of the next `horizon` steps, and the next `horizon` readings, in time
    order (consecutive windows overlap, as in the task's own test split)."""
    import pandas as pd

    from loopline.params import parse_params
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


def feed_noise(rng, length: int, sd: float, rho: float = 0.9) -> np.ndarray:
    """A stationary AR(1) relative error per target hour, with standard deviation `sd`."""
    shocks = rng.standard_normal(length) * sd * np.sqrt(1 - rho**2)
    out = np.empty(length)
    out[0] = rng.standard_normal() * sd
    for i in range(1, length):
        out[i] = rho * out[i - 1] + shocks[i]
    return out


def forecast(reps: int, rule: Paired, seed: int, quick: bool, horizon: int = 24) -> Family:
    """Ridge forecasters of the built-in solar data (lags + next day's clear sky), each
    repetition fitted on its own bootstrap of the first 60 % of the year; a 30-day period of
    each site's remaining 40 % tests it, read through the repetition's own input feeds."""
    from sklearn.linear_model import Ridge

    days, noise = 30, 0.3
    family = Family("forecast (solar)", f"RMSE, Diebold-Mariano h={horizon}", 0)
    sites = solar_windows(horizon=horizon)
    cuts = [int(len(t) * 0.6) for _, _, t in sites]
    train = [np.hstack([p[:c], a[:c]]) for (p, a, _), c in zip(sites, cuts, strict=True)]
    x_train = np.concatenate(train)
    y_train = np.concatenate([t[:c] for (_, _, t), c in zip(sites, cuts, strict=True)])
    held = [tuple(v[c + horizon :] for v in s) for s, c in zip(sites, cuts, strict=True)]
    length = 24 * days
    family.rows = length * len(sites)

    def fit(rng):
        rows = rng.integers(0, len(y_train), len(y_train))
        return Ridge(alpha=1.0).fit(x_train[rows], y_train[rows])

    def fed(model, past, ahead, error):
        """Forecasts with the next-day input read through a feed whose relative error for
        target hour t is error[t] (the same for every window that reads that hour)."""
        steps = np.arange(ahead.shape[1])
        hours = np.arange(len(ahead))[:, None] + steps[None, :]
        noisy = ahead * (1.0 + error[hours])
        return np.clip(model.predict(np.hstack([past, noisy])), 0, None)

    for rep in range(reps):
        rng = np.random.default_rng([seed, 6, rep])
        model, other = fit(rng), fit(rng)
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("a", "b", "half", "model", "other")}
        out.update(y=[], yesterday=[])
        whole: dict[str, list[np.ndarray]] = {k: [] for k in ("half", "b", "model", "other", "y")}
        for past, ahead, target in held:
            start = int(rng.integers(0, len(target) - length + 1))
            period = slice(start, start + length)
            p, a = past[period], ahead[period]
            errors = [feed_noise(rng, length + horizon, s) for s in (noise, noise, noise / 2)]
            out["a"].append(fed(model, p, a, errors[0]))
            out["b"].append(fed(model, p, a, errors[1]))
            out["half"].append(fed(model, p, a, errors[2]))
            out["model"].append(fed(model, p, a, 0 * errors[0]))
            out["other"].append(fed(other, p, a, 0 * errors[0]))
            out["y"].append(target[period])
            out["yesterday"].append(p[:, -horizon:])
            # The population gaps: the whole held-out part, fresh feed errors.
            span = len(target) + horizon
            whole["half"].append(fed(model, past, ahead, feed_noise(rng, span, noise / 2)))
            whole["b"].append(fed(model, past, ahead, feed_noise(rng, span, noise)))
            whole["model"].append(fed(model, past, ahead, np.zeros(span)))
            whole["other"].append(fed(other, past, ahead, np.zeros(span)))
            whole["y"].append(target)
        merged = {k: np.concatenate(v) for k, v in out.items()}
        scores = {k: score(merged["y"], v, overlap=horizon) for k, v in merged.items() if k != "y"}
        truth = np.concatenate(whole["y"])
        rmse = {k: score(truth, np.concatenate(v)).rmse for k, v in whole.items() if k != "y"}
        baselines = {"persistence": scores["yesterday"]}
        for cell, cand, champ in (
            ("equal", "a", "b"),
            ("power", "half", "b"),
            ("retrains", "model", "other"),
        ):
            decision = decide(scores[cand], scores[champ], baselines, "rmse", False, rule)
            record(family, cell, decision, 0.0 if cell == "equal" else rmse[cand] - rmse[champ])
    return family


# ---------------------------------------------------------------------- report


def interval(cell: dict) -> str:
    return f"{cell['rate']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"


def report(families: list[Family], alpha: float) -> None:
    header = (
        f"{'family':24s} {'test':38s} {'rows':>5s}  {'equal quality [95% CI]':>22s} {'':4s}"
        f"  {'power [95% CI]':>22s}  {'retrains, no tie':>22s}  {'point':>5s}"
    )
    print(header)
    for f in families:
        d = f.to_dict(alpha)
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[d["pass"]]
        print(
            f"{f.name:24s} {f.test:38s} {f.rows:5d}  {interval(d['equal']):>22s} {verdict:4s}"
            f"  {interval(d['power']):>22s}  {interval(d['retrains']):>22s}"
            f"  {d['point_rule_equal_rate']:5.3f}"
        )
    print(
        f"\nPASS: equal-quality rate <= alpha ({alpha:g}) and its upper bound <= 2 alpha "
        f"({2 * alpha:g}). power: a truly better candidate (mean population gap below); "
        "retrains: two models of one learner on other training rows (disjoint halves; "
        "forecasts: two bootstraps), untilted rows (each pair has its own true gap, so above "
        "alpha is expected); point: the point rule on the "
        f"equal pairs. n/a: fewer than {MIN_REPS} repetitions, no verdict."
    )
    for f in families:
        d = f.to_dict(alpha)
        metric = "RMSE" if "RMSE" in f.test else "accuracy"
        print(
            f"  {f.name}: power gap {metric} {d['power']['mean_population_gap']:+.4g}; "
            f"retrains mean |gap| {d['retrains']['mean_abs_population_gap']:.4g}; "
            f"{d['seconds']:.0f} s"
        )


FAMILIES = ("forecast", "text", "image", "tabular-classification", "tabular-regression")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=Path, default=REPO.parent / "shared/data/reviews_dev.tsv")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--resamples", type=int, default=199, help="of the bootstrap interval")
    parser.add_argument("--reps", type=int, default=None, help="per family (400; quick 100)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="100 repetitions, smaller text")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    reps = args.reps or (100 if args.quick else 400)
    rule = Paired(args.alpha, args.seed, args.resamples)
    wanted = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(wanted) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    print(f"paired gate, alpha {args.alpha}: {reps} independent repetitions per cell")
    started = time.perf_counter()
    runs = {
        "forecast": lambda: forecast(reps, rule, args.seed, args.quick),
        "text": lambda: text(args.reviews, reps, rule, args.seed, args.quick),
        "image": lambda: image(reps, rule, args.seed, args.quick),
        "tabular-classification": lambda: tabular(reps, rule, args.seed, args.quick, False),
        "tabular-regression": lambda: tabular(reps, rule, args.seed, args.quick, True),
    }
    families, skipped = [], []
    for name in wanted:
        if name == "text" and not args.reviews.exists():
            skipped.append(f"text: {args.reviews} not found")
            continue
        begun = time.perf_counter()
        family = runs[name]()
        family.seconds = time.perf_counter() - begun
        families.append(family)
    print()
    report(families, args.alpha)
    for line in skipped:
        print(f"skipped {line}")
    took = time.perf_counter() - started
    print(f"took {took:.0f} s")
    if args.json:
        result = {
            "alpha": args.alpha,
            "reps": reps,
            "quick": args.quick,
            "seed": args.seed,
            "families": {f.name: f.to_dict(args.alpha) for f in families},
            "skipped": skipped,
            "all_pass": all(f.passed(args.alpha) is True for f in families),
            "seconds": round(took, 1),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
