"""Masked-syllable pretraining: test accuracy vs labels, fine-tuned from a pretrained encoder
vs trained from scratch.

Run: .venv/bin/python benchmarks/pretraining.py [--quick] [--modes M ...] [--device cuda]
[--data PATH] [--out DIR] [--json [PATH]] [--threads N]
(--quick is a smoke run on a 20,000-review subsample, about 1.5 minutes; the full run took
19 minutes on 2 shared CPU cores with 1 torch thread: pretraining 2.5, 1,000 and 5,000
labels 7, all labels 8, see below for what was cut to get there).

Data: the shared `reviews_dev.tsv` (never copied into the repository), reviews with an
empty document dropped, split movie-disjoint by `loopline.offline.split.grouped_split` (80/10/10 by
movie_id, seed 42). The syllable vocabulary is built on the training texts only
(`Vocabulary.build`, min_count 2, max_size 6000); texts are read to 128 syllables.

1. Pretraining (`loopline.tasks.text.pretrain.pretrain_encoder`): the encoder (embed 64,
   hidden 128,
   2 conv layers, kernel 3, dropout 0.2) learns to guess masked syllables (15%, BERT's
   80/10/10) on the training texts with their labels ignored (5% of them held out for the
   masked-LM validation loss); batch 128, AdamW lr 3e-3 with warm-up and cosine decay.
2. For each labels count (1,000 / 5,000 / all training reviews; nested random draws from
   the training split, seed 42), the same classifier is trained by `loopline.offline.train.fit`
   twice or more: from scratch, and from the pretrained encoder (`load_pretrained`) with
   each fine-tuning mode of `--modes` (`make_fine_tuning`); lr 2e-3, batch 64, early
   stopping on the validation split's loss (patience 2), at most 8 epochs, seed 42 for
   every run (same initial pooling/head weights on both sides). The whole validation split
   (~15,000 labeled reviews) decides early stopping even with 1,000 training labels, for
   both arms alike.
3. Test accuracy (argmax of `train.predict`) on the movie-disjoint test split.

What was cut to fit the CPU budget (2 cores shared with other jobs): the full run pretrains
for 4 epochs (`--pretrain-epochs`); fine-tuning at "all" labels runs only the first mode of
`--modes` (`--modes-at-all` to change), the other modes run at 1,000 and 5,000 labels; torch
uses 1 thread by default (`--threads`): two threads fighting another job for 2 cores ran
several times slower in our measurements than one thread. `--device cuda` runs the
pretraining on a GPU; `train.fit` (the fine-tuning and scratch runs) is CPU-only.

Prints progress on stderr, then the accuracy table (rows: labels; columns: scratch and each
mode) and the times; writes the pretrained encoder (`save_encoder`) to <out>/encoder.pt
and, with --json, the numbers (no review text) to <out>/pretraining.json.
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
DEFAULT_OUT = Path("/tmp/loopline-bench/pretraining")
MODES = ("none", "gradual_unfreeze", "discriminative_lr", "freeze")
SEED = 42
HPARAMS = {
    "embed_size": 64,
    "hidden_size": 128,
    "layers": 2,
    "kernel_size": 3,
    "dropout": 0.2,
    "learning_rate": 2e-3,
    "batch_size": 64,
}
MAX_LENGTH = 128
FULL = {
    "sample": None,
    "labels": [1000, 5000, 0],  # 0: every training review
    "pretrain_epochs": 4,
    "pretrain_sample": None,
    "max_epochs": 8,
}
QUICK = {
    "sample": 20_000,
    "labels": [500, 2000, 0],
    "pretrain_epochs": 2,
    "pretrain_sample": None,
    "max_epochs": 3,
}
PRETRAIN = {"batch_size": 128, "learning_rate": 3e-3, "mask_rate": 0.15}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_reviews(path: Path, sample: int | None, seed: int):
    """The reviews with a non-empty document, and how many were dropped for an empty one."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=True)
    text = frame["document"].fillna("").str.strip()
    keep = text != ""
    frame = frame[keep].reset_index(drop=True)
    frame["label"] = frame["label"].astype(int)
    if sample is not None and sample < len(frame):
        frame = frame.sample(n=sample, random_state=seed).reset_index(drop=True)
    return frame, int((~keep).sum())


def examples(rows, vocab):
    """`Examples` of split rows: ids (to 128 syllables), int64 labels, ids as keys."""
    import pandas as pd

    from loopline.offline.labeling import Examples

    ids, _ = vocab.encode(rows["document"].tolist(), MAX_LENGTH)
    keys = pd.DataFrame({"id": rows["id"].astype(str).to_numpy()})
    return Examples(ids, rows["label"].to_numpy(dtype=np.int64), keys)


def train_one(train, val, test, vocab_size, mode, encoder_state, params):
    """One classifier: fitted (from scratch when `mode` is None) and scored on test."""
    from loopline.offline.features import FeatureSpec
    from loopline.offline.train import fit, predict, seed_everything
    from loopline.tasks.text.pretrain import build_classifier, load_pretrained, make_fine_tuning

    spec = FeatureSpec("reviews", [], "label")  # labels are ids
    seed_everything(SEED)  # the same initial weights for every run
    model = build_classifier(vocab_size, HPARAMS)
    fine_tuning = None
    if mode is not None:
        load_pretrained(model, encoder_state)
        fine_tuning = make_fine_tuning(mode)
    started = time.perf_counter()
    result = fit(model, train, val, spec, HPARAMS, params, SEED, fine_tuning=fine_tuning)
    fit_s = time.perf_counter() - started
    accuracy = float((predict(result.model, test.x).argmax(1) == test.y).mean())
    return {
        "accuracy": accuracy,
        "fit_s": fit_s,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
    }


def print_table(rows: list[dict], columns: list[str]) -> None:
    print()
    print("test accuracy (movie-disjoint test split)")
    print(f"{'labels':>8s}  " + "  ".join(f"{c:>17s}" for c in columns))
    for row in rows:
        cells = [f"{row[c]['accuracy']:17.4f}" if c in row else f"{'-':>17s}" for c in columns]
        print(f"{row['labels']:8d}  " + "  ".join(cells))
    print()
    print("fit time, s (epochs run, best epoch)")
    print(f"{'labels':>8s}  " + "  ".join(f"{c:>17s}" for c in columns))
    for row in rows:
        cells = [
            f"{row[c]['fit_s']:8.0f} ({row[c]['epochs']}, {row[c]['best_epoch']})".rjust(17)
            if c in row
            else f"{'-':>17s}"
            for c in columns
        ]
        print(f"{row['labels']:8d}  " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on a subsample")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="reviews TSV")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for outputs")
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        metavar="PATH",
        help="also write the numbers (to <out>/pretraining.json, or to PATH)",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="fine-tuning modes"
    )
    parser.add_argument(
        "--modes-at-all",
        nargs="+",
        choices=MODES,
        help="modes run with all labels (default: the first of --modes)",
    )
    parser.add_argument("--labels", nargs="+", type=int, help="labels counts (0: all)")
    parser.add_argument("--pretrain-epochs", type=int)
    parser.add_argument("--pretrain-sample", type=int, help="pretrain on this many texts")
    parser.add_argument("--max-epochs", type=int, help="fine-tuning / scratch epoch cap")
    parser.add_argument("--sample", type=int, help="use only this many reviews (random)")
    parser.add_argument("--device", default="cpu", help="pretraining device (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--ngram-buckets",
        type=int,
        default=0,
        help="classifiers get a hashed n-gram bag of this size (0: encoder only, as measured)",
    )
    args = parser.parse_args()
    config = dict(QUICK if args.quick else FULL)
    for key in config:
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    modes = list(dict.fromkeys(args.modes))
    modes_at_all = list(dict.fromkeys(args.modes_at_all or modes[:1]))
    if not args.data.exists():
        parser.error(f"no data at {args.data}")
    total_started = time.perf_counter()

    sys.path.insert(0, str(REPO / "src"))
    import torch

    from loopline.config import SplitParams, TrainParams
    from loopline.offline.split import grouped_split
    from loopline.tasks.text.pretrain import pretrain_encoder, save_encoder
    from loopline.tasks.text.tokens import Vocabulary

    torch.set_num_threads(args.threads)
    HPARAMS["ngram_buckets"] = args.ngram_buckets  # classifiers only: never pretrained
    frame, dropped = load_reviews(args.data, config["sample"], SEED)
    split = grouped_split(frame, SplitParams(), "movie_id", f"benchmark-{SEED}")
    train_rows = split[split["split"] == "train"].reset_index(drop=True)
    val_rows = split[split["split"] == "val"]
    test_rows = split[split["split"] == "test"]
    started = time.perf_counter()
    train_texts = train_rows["document"].tolist()
    vocab = Vocabulary.build(train_texts, min_count=2, max_size=6000)
    val, test = examples(val_rows, vocab), examples(test_rows, vocab)
    log(
        f"{len(frame)} reviews ({dropped} dropped: empty document); train {len(train_rows)} "
        f"/ val {len(val)} / test {len(test)} (movie-disjoint); vocabulary {len(vocab)} "
        f"tokens; {time.perf_counter() - started:.1f}s"
    )

    # 1. Pretraining on the training texts, labels ignored.
    pretrain_texts = train_texts
    if config["pretrain_sample"] is not None and config["pretrain_sample"] < len(train_texts):
        picked = np.random.default_rng(SEED).choice(
            len(train_texts), config["pretrain_sample"], replace=False
        )
        pretrain_texts = [train_texts[i] for i in np.sort(picked)]
    pretrain_started = time.perf_counter()

    def report(epoch) -> None:
        log(
            f"pretrain epoch {epoch.epoch}: train loss {epoch.train_loss:.3f} acc "
            f"{epoch.train_accuracy:.3f} | val loss {epoch.val_loss:.3f} acc "
            f"{epoch.val_accuracy:.3f}  elapsed {time.perf_counter() - pretrain_started:.0f}s"
        )

    pretrained = pretrain_encoder(
        pretrain_texts,
        vocab,
        HPARAMS,
        max_length=MAX_LENGTH,
        epochs=config["pretrain_epochs"],
        batch_size=PRETRAIN["batch_size"],
        learning_rate=PRETRAIN["learning_rate"],
        seed=SEED,
        on_epoch=report,
        device=args.device,
        mask_rate=PRETRAIN["mask_rate"],
    )
    pretrain_s = time.perf_counter() - pretrain_started
    encoder_path = save_encoder(pretrained, vocab, args.out / "encoder.pt")
    pretrain_tokens = int(sum(min(len(vocab.ids(t)), MAX_LENGTH) for t in pretrain_texts))

    # 2-3. Scratch vs fine-tuned, per labels count.
    params = TrainParams(max_epochs=config["max_epochs"], patience=2, threads=args.threads)
    order = np.random.default_rng(SEED).permutation(len(train_rows))
    rows = []
    for count in config["labels"]:
        n = len(train_rows) if count <= 0 or count >= len(train_rows) else count
        train = examples(train_rows.iloc[np.sort(order[:n])], vocab)
        row: dict = {"labels": n}
        for mode in [None, *(modes_at_all if n == len(train_rows) else modes)]:
            name = mode or "scratch"
            row[name] = train_one(
                train, val, test, len(vocab), mode, pretrained.encoder_state, params
            )
            log(
                f"{n:7d} labels  {name:17s} accuracy {row[name]['accuracy']:.4f}  "
                f"{row[name]['epochs']} epochs (best {row[name]['best_epoch']})  "
                f"{row[name]['fit_s']:.0f}s  elapsed {time.perf_counter() - total_started:.0f}s"
            )
        rows.append(row)
    del frame, split, train_rows, val_rows, test_rows, train_texts, pretrain_texts

    columns = ["scratch", *dict.fromkeys([*modes, *modes_at_all])]
    print_table(rows, columns)
    last = pretrained.history[-1]
    total_s = time.perf_counter() - total_started
    print()
    print(
        f"pretraining: {pretrained.n_train} texts ({pretrain_tokens:,} syllables, "
        f"{pretrained.n_val} held out), {len(pretrained.history)} epochs in {pretrain_s:.0f}s "
        f"on {args.device} ({pretrain_s / len(pretrained.history):.0f}s/epoch); masked-LM val "
        f"loss {pretrained.history[0].val_loss:.3f} -> {last.val_loss:.3f}, accuracy "
        f"{pretrained.history[0].val_accuracy:.3f} -> {last.val_accuracy:.3f} (best epoch "
        f"{pretrained.best_epoch}); encoder: {encoder_path}"
    )
    print(
        f"setup: test positive share {test.y.mean():.3f}; {dropped} dropped for an empty "
        f"document; max_length {MAX_LENGTH}; max epochs {config['max_epochs']}, patience 2; "
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s); {total_s:.0f}s in all; "
        f"{'quick' if args.quick else 'full'} run"
    )
    if args.json is not None:
        path = Path(args.json) if args.json else args.out / "pretraining.json"
        summary = {
            "config": {
                **config,
                "quick": args.quick,
                "modes": modes,
                "modes_at_all": modes_at_all,
                "hparams": HPARAMS,
                "pretrain": {**PRETRAIN, **pretrained.hparams},
                "max_length": MAX_LENGTH,
                "seed": SEED,
                "device": args.device,
                "threads": args.threads,
                "data": str(args.data),
                "dropped_empty": dropped,
                "vocab_size": len(vocab),
                "val_size": len(val),
                "test_size": len(test),
                "cores": os.cpu_count(),
            },
            "pretraining": {
                "texts": pretrained.n_train,
                "held_out": pretrained.n_val,
                "syllables": pretrain_tokens,
                "seconds": pretrain_s,
                "best_epoch": pretrained.best_epoch,
                "history": [vars(e) for e in pretrained.history],
            },
            "results": rows,
            "seconds": {"pretrain": pretrain_s, "total": total_s},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
