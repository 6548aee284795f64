"""Training cost: Loopline's loop against a bare PyTorch loop, on an idle and a busy machine,
and data-parallel training (`train.processes`) against one process.

Run: .venv/bin/python benchmarks/training.py [--quick] [--json PATH]

Issue 28's targets, measured side by side in one run:

  step cost      `train.fit`'s training loop (the tabular family's `RowMLP`, 64 units, batches
                 of 32 rows, the default `train:` section: 1 thread) per step, against a bare
                 loop (`for x, y in batches: zero_grad, forward, loss, backward, step` at 1
                 thread) on the same model, rows and batches: within 1.5x, on an idle
                 machine and while another process keeps one core busy (a Python busy loop).
                 Torch's own default (as many threads as cores) is measured beside it: the
                 collapse the default avoids.
  data-parallel  `fit` with `train.processes: 2` against `train.processes: 1` on a model where
                 compute dominates (an MLP of 2 x 1024 units, batches of 4,096): >= 1.6x
                 faster per epoch (between the first and last epoch's reports; the group's
                 start-up is printed apart), and the same final validation loss within
                 noise: the larger of 2 % and the difference another seed makes in one
                 process.

Each row prints what else ran (the machine's 1-minute load before it). On a 2-core machine
the busy row shares a core with the busy loop, which is the point of it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from loopline.config import TrainParams
from loopline.offline.features import FeatureSpec
from loopline.offline.labeling import Examples
from loopline.offline.train import fit, seed_everything
from loopline.tasks.rows.model import RowMLP
from loopline.tasks.rows.task import RowHyperparameters

SPEC = FeatureSpec(
    task="bench", feature_columns=[], target_column="y", target_mean=0.0, target_std=1.0
)


def examples(rows: int, features: int, seed: int) -> Examples:
    """A learnable regression: y is a fixed random projection of x plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    w = np.random.default_rng(0).normal(size=(features, 1)).astype(np.float32) / features**0.5
    y = (x @ w + 0.1 * rng.normal(size=(rows, 1))).astype(np.float32)
    return Examples(x, y, pd.DataFrame({"g": np.zeros(rows, dtype=int)}))


def hparams(hidden: int, layers: int, batch: int) -> RowHyperparameters:
    return RowHyperparameters.from_dict(
        {"hidden_size": hidden, "layers": layers, "dropout": 0.0, "learning_rate": 1e-3}
        | {"batch_size": batch}
    )


def model(features: int, hidden: int, layers: int, seed: int = 7) -> RowMLP:
    seed_everything(seed)
    return RowMLP(features, 1, hidden, layers, 0.0, classify=False)


def fit_seconds(rows, features, hidden, layers, batch, epochs, params: TrainParams, seed=7):
    """Seconds per epoch of `fit` (validation included) between its first and last epoch
    reports (a group's start-up, two interpreters and a rendezvous, left out: it is paid
    once per training, printed apart), the start-up's seconds, and the final validation
    loss."""
    train, val = examples(rows, features, 1), examples(rows // 4, features, 2)
    reported: list[float] = []

    def report(_) -> None:
        reported.append(time.perf_counter())

    started = time.perf_counter()
    result = fit(
        model(features, hidden, layers, seed), train, val, SPEC, hparams(hidden, layers, batch),
        params, seed=seed, max_epochs=epochs, on_epoch=report,
    )  # fmt: skip
    per_epoch = (reported[-1] - reported[0]) / (len(reported) - 1)
    start_up = reported[0] - started - per_epoch
    return per_epoch, start_up, result.history[-1].val_loss


def bare_step_ms(rows, features, hidden, layers, batch, steps, threads: int) -> float:
    """ms per step of a bare loop at `threads` threads on the same model and batches."""
    torch.set_num_threads(threads)
    data = examples(rows, features, 1)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    net = model(features, hidden, layers)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(7))
    index = [order[s : s + batch] for s in range(0, rows - batch + 1, batch)]
    started = time.perf_counter()
    for step in range(steps):
        rows_ = index[step % len(index)]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x[rows_]), y[rows_])
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) * 1000 / steps


def loop_step_ms(rows, features, hidden, layers, batch, epochs, threads: int) -> float:
    """ms per training step of `fit` (the whole epoch, validation included, over its steps)."""
    seconds, _, _ = fit_seconds(
        rows, features, hidden, layers, batch, epochs, TrainParams(threads=threads, patience=99)
    )
    return seconds * 1000 / -(-rows // batch)


def spin(stop) -> None:
    """Keep one core busy until `stop` is set."""
    while not stop.is_set():
        sum(range(10_000))


def step_rows(quick: bool) -> list[dict]:
    rows, features, hidden, layers, batch = 8192, 16, 64, 2, 32
    epochs, steps = (2, 256) if quick else (4, 1024)
    out = []
    for busy in (False, True):
        stop = multiprocessing.Event()
        spinner = multiprocessing.Process(target=spin, args=(stop,), daemon=True)
        if busy:
            spinner.start()
            time.sleep(0.5)
        load = os.getloadavg()[0]
        bare = bare_step_ms(rows, features, hidden, layers, batch, steps, 1)
        ours = loop_step_ms(rows, features, hidden, layers, batch, epochs, 1)
        torch_default = bare_step_ms(
            rows, features, hidden, layers, batch, steps // 4, os.cpu_count()
        )
        if busy:
            stop.set()
            spinner.join()
        out.append(
            {
                "machine": "one core busy" if busy else "idle",
                "bare_ms": bare,
                "loopline_ms": ours,
                "ratio": ours / bare,
                "torch_default_threads_bare_ms": torch_default,
                "load_before": load,
            }
        )
    return out


def parallel_row(quick: bool) -> dict:
    rows, features, hidden, layers, batch = (32768, 256, 1024, 2, 4096)
    epochs = 3 if quick else 6
    load = os.getloadavg()[0]
    one, _, loss_one = fit_seconds(
        rows, features, hidden, layers, batch, epochs, TrainParams(threads=1, patience=99)
    )
    # Noise: the same training from another seed, in one process.
    _, _, loss_other_seed = fit_seconds(
        rows, features, hidden, layers, batch, epochs, TrainParams(threads=1, patience=99), 8
    )
    two, start_up, loss_two = fit_seconds(
        rows, features, hidden, layers, batch, epochs,
        TrainParams(threads=1, patience=99, processes=2),
    )  # fmt: skip
    return {
        "group_start_up_s": start_up,
        "one_process_s_per_epoch": one,
        "two_processes_s_per_epoch": two,
        "speedup": one / two,
        "val_loss_one": loss_one,
        "val_loss_two": loss_two,
        "val_loss_relative_difference": abs(loss_two - loss_one) / loss_one,
        "val_loss_other_seed": loss_other_seed,
        "seed_noise_relative": abs(loss_other_seed - loss_one) / loss_one,
        "epochs": epochs,
        "load_before": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    steps = step_rows(args.quick)
    print("step cost, RowMLP 16 -> 2 x 64 -> 1, batches of 32 (ms per step)")
    for row in steps:
        verdict = "PASS" if row["ratio"] <= 1.5 else "MISS"
        print(
            f"  {row['machine']:14s} bare {row['bare_ms']:6.3f}  Loopline {row['loopline_ms']:6.3f}"
            f"  ratio {row['ratio']:5.2f} (<= 1.5: {verdict})  torch's default threads, bare "
            f"{row['torch_default_threads_bare_ms']:7.3f}  (load before {row['load_before']:.2f})"
        )
    row = parallel_row(args.quick)
    fast = "PASS" if row["speedup"] >= 1.6 else "MISS"
    noise = max(0.02, row["seed_noise_relative"])
    same = "PASS" if row["val_loss_relative_difference"] <= noise else "MISS"
    print("data-parallel, MLP 256 -> 2 x 1024 -> 1, batches of 4,096, 32,768 rows")
    print(
        f"  1 process {row['one_process_s_per_epoch']:.2f} s/epoch, 2 processes "
        f"{row['two_processes_s_per_epoch']:.2f} s/epoch: {row['speedup']:.2f}x (>= 1.6: {fast}); "
        f"final val loss {row['val_loss_one']:.5f} vs {row['val_loss_two']:.5f} "
        f"({100 * row['val_loss_relative_difference']:.2f} %; another seed in one process: "
        f"{100 * row['seed_noise_relative']:.2f} %; within the larger of that and 2 %: {same}); "
        f"{row['epochs']} epochs; the group's start-up {row['group_start_up_s']:.1f} s, once; "
        f"load before {row['load_before']:.2f}"
    )
    print(f"setup: {os.cpu_count()} cores, torch {torch.__version__}")
    if args.json:
        args.json.write_text(json.dumps({"steps": steps, "parallel": row}, indent=2))


if __name__ == "__main__":
    main()
