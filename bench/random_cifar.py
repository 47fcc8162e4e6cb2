"""Random channel pruning on CIFAR-10 (JPEG) ResNet-20: the issue's real-data experiments.

Two experiments, both from the committed dense checkpoint at 50% of its FLOPs:

- compare:  the random search (32 candidates, l1, BN-recalibration scoring) against
            the uniform-ratio plan ("uniform" method) with the same criterion, the
            same rounding and the same fine-tuning recipe, for several seeds;
- criteria: the random search with each criterion (the same 32 sampled
            architectures for every criterion, since sampling depends only on the
            seed), then a short fine-tune of each winner: the paper's criteria table.

Every run writes bench/results/random_runs/<run>.json as soon as it ends and
is skipped when that file exists; the pruned model goes to runs/random_bench/.
Interrupted fine-tunes resume from their checkpoint (the search is
deterministic, so it finds the same winner again).

    bench/slot .venv/bin/python bench/random_cifar.py compare --seeds 0 1 --epochs 4
    bench/slot .venv/bin/python bench/random_cifar.py criteria --epochs 1 --steps-per-epoch 130
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
from prunelab import planners
from prunelab.data import build_data
from prunelab.io import read_meta
from prunelab.methods import PruneTask, get_method
from prunelab.methods.finetune import accuracy
from prunelab.methods.random_scoring import ScoringSetup, score_candidate
from prunelab.train import TrainConfig

CHECKPOINT = Path("src/prunelab/checkpoints/resnet20_cifar10_jpg.pt")
RESULTS = Path("bench/results/random_runs")
RUNS = Path("runs/random_bench")
CRITERIA = ["l1", "l2", "gm", "taylor", "es", "kl", "bn_scale", "random"]
TARGET = 0.5
HOLDOUT = 2000  # training images held out to score candidates (kept out of fine-tuning too)
SEARCH = {  # the random search, as scaled for a 1-thread CPU slot
    "candidates": 32, "r_min": 0.1, "tolerance": 0.02, "round_to": 8, "scoring": "bn",
    "bn_batches": 10, "criterion_batches": 4,
}  # fmt: skip


def recipe(epochs: int, seed: int, threads: int, run_dir: Path, steps: int | None = None
           ) -> TrainConfig:  # fmt: skip
    """Fine-tuning: SGD + Nesterov, lr 0.02 cosine to 0, wd 5e-4, batch 128, channels_last."""
    return TrainConfig(
        epochs=epochs, batch_size=128, lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="cosine", seed=seed, channels_last="on", threads=threads,
        eval_every=max(1, epochs), resume=True, progress_seconds=120.0, steps_per_epoch=steps,
        run_dir=str(run_dir),  # the methods write to run_dir/<their subdir>
    )  # fmt: skip


def uniform_holdout_score(dense: torch.nn.Module, data: Any, options: dict[str, Any]) -> float:
    """The random search's BN-recalibration score of the plan the uniform method builds."""
    graph = prunelab.trace(dense, torch.zeros(1, 3, 32, 32))
    plan = planners.for_cost(dense, graph, TARGET, criterion=options["criterion"],
                             round_to=options["round_to"])  # fmt: skip
    state = data.train.state_dict()
    setup = ScoringSetup("bn", data, state, bn_batches=SEARCH["bn_batches"])
    value = score_candidate(setup, prunelab.prune(dense, plan))
    data.train.load_state_dict(state)
    return value


def run_one(name: str, method: str, options: dict[str, Any], seed: int, epochs: int,
            args: argparse.Namespace) -> None:  # fmt: skip
    threads = args.threads
    out = args.results / f"{name}.json"
    if out.exists():
        print(f"skip {name}: {out} exists", flush=True)
        return
    print(f"=== {name}: {method} {options} seed {seed}, {epochs} fine-tune epochs", flush=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    if args.data == "synthetic":  # smoke tests of this script
        data = build_data("synthetic", batch_size=32, holdout=64, n_train=512, n_test=128)
    else:
        data = build_data("cifar10_jpg", batch_size=128, holdout=HOLDOUT, seed=0)
    dense = prunelab.load(args.checkpoint)
    x = torch.zeros(1, 3, 32, 32)
    dense_cost = prunelab.count(dense, x)
    train = recipe(epochs, seed, threads, args.runs / name, args.steps_per_epoch)
    task = PruneTask(dense, data, target=TARGET, metric="flops", train=train,
                     run_dir=args.runs / name, seed=seed)  # fmt: skip
    # Where the uniform plan would rank among the random candidates: the same cheap score.
    uniform_score = uniform_holdout_score(dense, data, options) if method == "uniform" else None
    result = get_method(method)(**options).run(task)
    model = result.model.eval()
    cost = prunelab.count(model, x)
    top1 = result.info.get("finetune", {}).get("top1")
    if top1 is None:  # no fine-tuning: measure the pruned model as it is
        top1 = accuracy(model, data.test)
    prunelab.save(model, args.runs / f"{name}.pt", meta={"run": name, "top1": top1})
    record = {
        "run": name, "method": method, "options": options, "seed": seed, "epochs": epochs,
        "top1": top1, **cost_fields(model, cost, dense_cost),
        "dense_top1": read_meta(args.checkpoint).get("top1"),
        "history": result.history, "info": result.info, "uniform_holdout_score": uniform_score,
        "seconds": time.perf_counter() - t0, "threads": threads,
    }  # fmt: skip
    write_record(out, record, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["compare", "criteria"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument(
        "--random-only",
        action="store_true",
        help="compare: skip the uniform arm (deterministic, the same every seed)",
    )
    parser.add_argument("--candidates", type=int, default=SEARCH["candidates"])
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
    search = {**SEARCH, "candidates": args.candidates}
    for seed in args.seeds:
        if args.experiment == "compare":
            run_one(f"compare_random_l1_s{seed}", "random", {**search, "criterion": "l1"}, seed,
                    args.epochs, args)  # fmt: skip
            if not args.random_only:  # the uniform plan and its fine-tune do not vary by seed
                run_one(f"compare_uniform_l1_s{seed}", "uniform",
                        {"criterion": "l1", "round_to": 8}, seed, args.epochs, args)  # fmt: skip
        else:
            for criterion in args.criteria:
                run_one(f"criteria_{criterion}_s{seed}", "random",
                        {**search, "criterion": criterion}, seed, args.epochs, args)  # fmt: skip


if __name__ == "__main__":
    main()
