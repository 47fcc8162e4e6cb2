"""DWR on CIFAR-10 (JPEG) ResNet-20: data collection and the Table 1 arms, scaled for a CPU slot.

From the committed dense checkpoint at 50% of its FLOPs (MACs):

- collect DIM...: the paper's Algorithm 1 along each dimension (depth, width,
  resolution): 4 rounds, each pruning a little more and fine-tuning
  ROUND_EPOCHS epoch(s); every round's point and model is cached in
  runs/dwr_bench/collect the moment it exists (a rerun continues there);
- arm NAME...: prune and fine-tune FINAL_EPOCHS epochs with one dimension
  (depth, width, resolution) or all three (3d, which reads the collected
  points, fits the rank-1 cubic accuracy model and maximises it on
  d * w^2 * r^2 = T). Every arm gets the same final fine-tune.

Each arm writes bench/results/dwr_runs/<arm>.json as soon as it ends and is
skipped when that file exists; interrupted fine-tunes resume from their
checkpoint. Dimensions and arms are separate processes, so two slots can
work at once:

    bench/slot .venv/bin/python bench/dwr_cifar.py collect depth width resolution
    bench/slot .venv/bin/python bench/dwr_cifar.py arm depth width resolution
    bench/slot .venv/bin/python bench/dwr_cifar.py arm 3d
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

import prunelab
from arm_record import cost_fields, write_record
from prunelab.data import build_data
from prunelab.io import read_meta
from prunelab.methods import PruneTask, get_method
from prunelab.methods.dwr import Collector, at_resolution
from prunelab.methods.finetune import accuracy
from prunelab.train import TrainConfig

CHECKPOINT = Path("src/prunelab/checkpoints/resnet20_cifar10_jpg.pt")
RESULTS = Path("bench/results/dwr_runs")
RUNS = Path("runs/dwr_bench")
TARGET = 0.5
HOLDOUT = 5000  # training images for point accuracies and DBP probes (kept out of fine-tuning)
ROUNDS = 4
ROUND_EPOCHS = 1  # paper: 40 on CIFAR
FINAL_EPOCHS = 12  # paper: 80 on CIFAR
ARMS = {"depth": ["depth"], "width": ["width"], "resolution": ["resolution"],
        "3d": ["depth", "width", "resolution"]}  # fmt: skip


def recipe(epochs: int, threads: int, run_dir: Path, steps: int | None) -> TrainConfig:
    """Fine-tuning: SGD + Nesterov, lr 0.02 cosine to 0, wd 5e-4, batch 128, channels_last."""
    return TrainConfig(
        epochs=epochs, batch_size=128, lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="cosine", seed=0, channels_last="on", threads=threads,
        eval_every=max(1, epochs), resume=True, progress_seconds=120.0, steps_per_epoch=steps,
        run_dir=str(run_dir),
    )  # fmt: skip


def options(args: argparse.Namespace, dims: list[str]) -> dict[str, Any]:
    return {"dims": dims, "rounds": args.rounds, "round_epochs": args.round_epochs,
            "final_epochs": args.final_epochs, "probe_batches": 40,
            "collect_dir": str(args.runs / "collect")}  # fmt: skip


def make_task(args: argparse.Namespace, run_dir: Path) -> PruneTask:
    if args.data == "synthetic":  # smoke tests of this script
        data = build_data("synthetic", batch_size=32, holdout=64, n_train=512, n_test=128)
    else:
        data = build_data("cifar10_jpg", batch_size=128, holdout=HOLDOUT, seed=0)
    train = recipe(args.final_epochs, args.threads, run_dir, args.steps_per_epoch)
    return PruneTask(prunelab.load(args.checkpoint), data, target=TARGET, metric="flops",
                     train=train, run_dir=run_dir, seed=0)  # fmt: skip


def collect(args: argparse.Namespace, dims: list[str]) -> None:
    task = make_task(args, args.runs)
    method = get_method("dwr")(**options(args, dims))
    col = Collector(task, method.options)
    for dim in dims:
        t0 = time.perf_counter()
        points = col.collect([dim])
        print(f"=== collect {dim}: {len(points) - 1} rounds, "
              f"{(time.perf_counter() - t0) / 60:.1f} min this run", flush=True)  # fmt: skip


def arm(args: argparse.Namespace, name: str) -> None:
    out = args.results / f"{name}.json"
    if out.exists():
        print(f"skip {name}: {out} exists", flush=True)
        return
    print(f"=== arm {name}: {ARMS[name]}, {args.final_epochs} final epochs", flush=True)
    t0 = time.perf_counter()
    task = make_task(args, args.runs / f"arm_{name}")
    dense = task.model
    x = torch.zeros(1, *task.data.effective_input_size)
    dense_cost = prunelab.count(dense, x)
    result = get_method("dwr")(**options(args, ARMS[name])).run(task)
    model = result.model.eval()
    size = model.prunelab_input_size
    cost = prunelab.count(model, torch.zeros(1, *size))
    with at_resolution(task.data, size[1]):  # evaluate as the CLI does: at the recorded size
        top1 = accuracy(model, task.data.test)
    prunelab.save(model, args.runs / f"arm_{name}.pt", meta={"arm": name, "top1": top1})
    record = {
        "arm": name, "dims": ARMS[name], "top1": top1,
        "dense_top1": read_meta(args.checkpoint).get("top1"),
        **cost_fields(model, cost, dense_cost),
        "input_size": list(size), "final_epochs": args.final_epochs,
        "round_epochs": args.round_epochs, "rounds": args.rounds,
        "history": result.history, "info": result.info,
        "seconds": time.perf_counter() - t0, "threads": args.threads,
    }  # fmt: skip
    write_record(out, record, f"arm {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["collect", "arm"])
    parser.add_argument("names", nargs="+", help="dimensions (collect) or arms (arm)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--round-epochs", type=int, default=ROUND_EPOCHS)
    parser.add_argument("--final-epochs", type=int, default=FINAL_EPOCHS)
    # For smoke tests of this script: another checkpoint, folders, fewer steps.
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--data", choices=["cifar10_jpg", "synthetic"], default="cifar10_jpg")
    args = parser.parse_args()
    args.threads = int(os.environ.get("PRUNELAB_THREADS", "2"))
    torch.set_num_threads(args.threads)
    if not args.checkpoint.exists():
        raise SystemExit(f"no dense checkpoint at {args.checkpoint}: see bench/train_baseline.py")
    known = ARMS if args.command == "arm" else ARMS["3d"]
    unknown = [n for n in args.names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {args.command} name(s) {unknown}; choose from {list(known)}")
    if args.command == "collect":
        collect(args, args.names)
    else:
        for name in args.names:
            arm(args, name)


if __name__ == "__main__":
    main()
