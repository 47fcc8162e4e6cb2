"""CHEX on CIFAR-10 (JPEG), ResNet-20 at 50% FLOPs: the comparison and the ablations.

Every arm trains for the same number of epochs with the dense baseline's
recipe (batch 128, SGD Nesterov 0.9, lr 0.1, 1 warm-up epoch, cosine to 0,
weight decay 5e-4, crop + flip), scaled from the paper's hundreds of epochs
to what fits a shared 2-core CPU:

    dense      dense ResNet-20, 15 epochs (saves its epoch-10 weights)
    chex       CHEX from scratch, 15 epochs, update every epoch up to T_max = 11
    uniform    uniform-l1 prune of the dense epoch-10 weights + 5 epochs fine-tune
    random     random-search prune of the same weights + 5 epochs fine-tune
    abl_*      ablations at a third of the cost: 15 "epochs" of 130 steps each
               (sample | topk | gradual | shortcuts)

Each finished arm writes bench/results/chex_runs/<arm>.json and is skipped on
a rerun; an interrupted arm resumes from its checkpoint in runs/chex_bench/.

    PRUNELAB_DATA=... bench/slot .venv/bin/python bench/chex_cifar.py chex dense
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

import prunelab
from prunelab.data import build_data
from prunelab.methods import PruneTask, get_method
from prunelab.methods.finetune import accuracy
from prunelab.train import Callback, TrainConfig, Trainer
from prunelab.train.optim import LRSchedule

SMOKE = False
RESULTS = Path("bench/results/chex_runs")
RUNS = Path("runs/chex_bench")
EPOCHS = 15
PRUNE_AT = 10  # uniform / random prune the dense weights after this many epochs
ABLATION_STEPS = 130  # a third of a CIFAR-10 epoch at batch 128
STEPS: int | None = None  # --steps-per-epoch: every arm's epoch length (None: whole epochs)
TARGET = 0.5
CHEX = {"delta0": 0.3, "interval": 1, "t_max": 0.72, "regrow": "sample"}
ABLATIONS = {
    "abl_sample": {},
    "abl_topk": {"regrow": "topk"},
    "abl_gradual": {"regrow": "none"},
    "abl_shortcuts": {"shortcuts": True},
}


def threads() -> int:
    return int(os.environ.get("PRUNELAB_THREADS", "2"))


def recipe(run_dir: Path | None, **changes: Any) -> TrainConfig:
    """The dense baseline's recipe (bench/train_baseline.py), scaled to EPOCHS."""
    if SMOKE:
        changes = {**changes, "steps_per_epoch": 3, "epochs": min(changes.get("epochs", 3), 3)}
    base = {
        "epochs": EPOCHS, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1, "seed": 0,
        "channels_last": "on", "threads": threads(), "quiet": False,
        "progress_seconds": 120.0, "steps_per_epoch": STEPS,
        "run_dir": str(run_dir) if run_dir else None, "resume": run_dir is not None,
    }  # fmt: skip
    return TrainConfig(**{**base, **changes})


def data(holdout: int = 0):
    d = build_data("cifar10_jpg", batch_size=128, seed=0, holdout=holdout)
    if SMOKE:  # evaluate on a few batches only
        d.test.indices = torch.arange(256)
    return d


def cost_ratio(model: torch.nn.Module) -> dict[str, float]:
    x = torch.zeros(1, 3, 32, 32)
    dense = prunelab.count(prunelab.create("resnet20", num_classes=10), x)
    small = prunelab.count(model, x)
    return {"flops": small.flops / dense.flops, "params": small.params / dense.params}


def widths(model: torch.nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


class _Snapshot(Callback):
    """Save the dense weights after `PRUNE_AT` epochs for the prune-then-fine-tune arms."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        if epoch + 1 == PRUNE_AT:
            model = trainer.model
            prunelab.save(model, self.path, meta={"epochs": PRUNE_AT,
                                                  "top1": metrics.get("test_top1")})  # fmt: skip


def run_dense() -> dict[str, Any]:
    d = data()
    torch.manual_seed(0)
    model = prunelab.create("resnet20", num_classes=10)
    trainer = Trainer(
        model, d, recipe(RUNS / "dense"), callbacks=[_Snapshot(RUNS / "dense_ep10.pt")]
    )
    final = trainer.fit()
    return {"arm": "dense", "top1": final["top1"], "final": final, "history": trainer.history,
            "cost": {"flops": 1.0, "params": 1.0}}  # fmt: skip


def run_chex(arm: str, options: dict[str, Any], **train: Any) -> dict[str, Any]:
    d = data()
    torch.manual_seed(0)
    model = prunelab.create("resnet20", num_classes=10)
    task = PruneTask(model, d, target=TARGET, train=recipe(RUNS / arm, **train), run_dir=RUNS / arm)
    t0 = time.perf_counter()
    result = get_method("chex")(**options).run(task)
    pruned = result.model.eval()
    prunelab.save(pruned, RUNS / f"{arm}.pt", meta={"method": "chex", "options": options})
    return {
        "arm": arm, "top1": accuracy(pruned, d.test), "masked_top1": result.info["final"]["top1"],
        "cost": cost_ratio(pruned), "widths": widths(pruned), "info": result.info,
        "history": result.history, "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def run_after_dense(arm: str) -> dict[str, Any]:
    snap = RUNS / "dense_ep10.pt"
    if not snap.exists():
        raise SystemExit(f"{arm} needs {snap}: run the dense arm first")
    method, options, holdout = {
        "uniform": ("uniform", {"criterion": "l1"}, 0),
        "random": ("random", {"candidates": 16, "scoring": "bn"}, 2000),
    }[arm]
    d = data(holdout)
    model = prunelab.load(snap)
    # continue the dense run's schedule: the lr it had at epoch PRUNE_AT, cosine to 0
    dense_cfg = recipe(None)
    steps = STEPS or len(d.train)
    lr = LRSchedule(dense_cfg, steps, dense_cfg.lr).lr(PRUNE_AT * steps)
    train = recipe(RUNS / arm, epochs=EPOCHS - PRUNE_AT, lr=lr, warmup_epochs=0)
    task = PruneTask(model, d, target=TARGET, train=train, run_dir=RUNS / arm)
    t0 = time.perf_counter()
    result = get_method(method)(**options).run(task)
    pruned = result.model.eval()
    return {
        "arm": arm, "top1": accuracy(pruned, d.test), "cost": cost_ratio(pruned),
        "widths": widths(pruned), "info": result.info, "history": result.history,
        "finetune_lr": lr, "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def run(arm: str) -> dict[str, Any]:
    if arm == "dense":
        return run_dense()
    if arm == "chex":
        return run_chex(arm, CHEX)
    if arm in ABLATIONS:
        return run_chex(arm, {**CHEX, **ABLATIONS[arm]}, steps_per_epoch=ABLATION_STEPS,
                        eval_every=5)  # fmt: skip
    if arm in ("uniform", "random"):
        return run_after_dense(arm)
    raise SystemExit(f"unknown arm {arm!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arms", nargs="+")
    parser.add_argument("--smoke", action="store_true", help="3 steps an epoch, results in /tmp")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="shorten every arm's epochs to this many steps")  # fmt: skip
    args = parser.parse_args()
    global SMOKE, RESULTS, RUNS, PRUNE_AT, STEPS
    STEPS = args.steps_per_epoch
    if args.smoke:
        SMOKE, RESULTS, RUNS, PRUNE_AT = (
            True,
            Path("/tmp/chex_smoke/results"),
            Path("/tmp/chex_smoke/runs"),
            2,
        )
    torch.set_num_threads(threads())
    RESULTS.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    for arm in args.arms:
        out = RESULTS / f"{arm}.json"
        if out.exists():
            print(f"{arm}: done already ({out})")
            continue
        t0 = time.perf_counter()
        record = run(arm)
        record["wall_seconds"] = time.perf_counter() - t0
        record["threads"] = threads()
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=float))
        tmp.replace(out)
        print(f"{arm}: top-1 {record['top1']:.2f}%, FLOPs {record['cost']['flops']:.3f} -> {out}")


if __name__ == "__main__":
    main()
