"""CHEX, BWCP and random pruning end to end on each architecture family their papers name.

One arm per call, CIFAR-10 (JPEG), 50% of the dense FLOPs (MACs), from scratch:

    <method>  the method's run on a fresh model: `--epochs` epochs of `--steps` steps,
              batch 64, SGD 0.9 lr 0.05 cosine, weight decay 5e-4 (the methods check
              that the exported model computes what the masked one did)
    random    random channel pruning from scratch (the paper's supplement): `candidates`
              architectures sampled under the budget, each re-initialised and scored by
              `score_steps` SGD steps then top-1 on 1024 held-out training images (left out
              of this arm's training set); the best re-initialised and trained for the same
              `--epochs` x `--steps` (scoring is search cost, recorded apart); it prunes
              physically, so there is no masked model to compare (export_max_diff null)
    uniform   uniform-l1 pruning of the same fresh model to the same budget, then the
              same number of training steps (the from-scratch yardstick)

Top-1 is measured on `--test` test images drawn at random (seed 0) from the whole test set
(the JPEG test set is stored class by class: its first 2000 images are two classes). Records go to
bench/results/arch_runs/<method>_<arch>.json (the uniform arm: uniform_<arch>.json, shared
by both methods); `--table` prints the markdown table.

    PRUNELAB_DATA=... nice -n 10 python bench/arch_e2e.py chex resnet56
    python bench/arch_e2e.py --table chex
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import prunelab
from prunelab.atomic import atomic_write_text
from prunelab.data import build_data
from prunelab.methods import PruneTask, get_method
from prunelab.methods.finetune import accuracy
from prunelab.train import TrainConfig

RESULTS = Path("bench/results/arch_runs")
RUNS = Path("runs/arch_e2e")
TARGET = 0.5
OPTIONS: dict[str, dict[str, Any]] = {
    # updates every 20 steps up to 72% of training: 7 prune-regrow updates in 200 steps
    "chex": {"unit": "step", "interval": 20, "delta0": 0.3, "t_max": 0.72},
    # λ as B.2 (4e-5, 8e-5), the default when these records were measured
    "bwcp": {"lambda1": 4e-5, "lambda2": 8e-5, "target_control": True,
             "init_probability": 0.85, "warmup_epochs": 0.5, "control_every": 20,
             "target_ramp_epochs": 1.0, "shortcuts": False, "recalibrate_batches": 20},
    # from scratch: 6 candidates x 20 scoring steps (120 steps of search, 60% of the final
    # training); residual stages share one ratio (shortcuts, the paper's supplement)
    "random": {"from_scratch": True, "scoring": "finetune", "candidates": 6, "score_steps": 20,
               "finetune_lr": 0.05, "bn_batches": 5, "round_to": 1, "shortcuts": True,
               "r_min": 0.1, "tolerance": 0.02},
    "uniform": {"criterion": "l1", "round_to": 1, "shortcuts": False},
}
HOLDOUT = {"random": 1024}  # training images a method scores candidates on


def recipe(args: argparse.Namespace, arm: str) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps, batch_size=64, lr=0.05, momentum=0.9,
        weight_decay=5e-4, schedule="cosine", warmup_epochs=0, seed=0, threads=1,
        quiet=False, progress_seconds=120.0, eval_every=args.epochs,
        run_dir=str(RUNS / arm),
    )  # fmt: skip


def test_subset(total: int, n: int) -> torch.Tensor:
    """`n` of `total` test images at random (seed 0), in stored order."""
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n]
    return pick.sort().values


def run(args: argparse.Namespace, method: str) -> dict[str, Any]:
    d = build_data("cifar10_jpg", batch_size=64, holdout=HOLDOUT.get(method, 0), seed=0)
    d.test.indices = test_subset(d.test.images.shape[0], args.test)
    torch.manual_seed(0)
    model = prunelab.create(args.arch, num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    dense = prunelab.count(model, x)
    arm = args.tag_name
    task = PruneTask(model, d, target=TARGET, train=recipe(args, arm), run_dir=RUNS / arm)
    t0 = time.perf_counter()
    result = get_method(method)(**OPTIONS[method]).run(task)
    seconds = time.perf_counter() - t0
    pruned = result.model.eval()
    small = prunelab.count(pruned, x)
    info = result.info
    diff = info.get("masked_vs_pruned_max_diff", info.get("export_max_diff"))
    return {
        "arm": arm, "method": method, "arch": args.arch, "top1": accuracy(pruned, d.test),
        "flops": small.flops / dense.flops, "params": small.params / dense.params,
        "export_max_diff": diff, "steps": args.epochs * args.steps, "test_images": args.test,
        "test_subset": "random (seed 0)",
        "seconds": seconds, "options": OPTIONS[method],
        "info": {k: v for k, v in info.items() if k in (
            "css_used", "threshold", "controller_ratio", "lambda_scale", "kept", "sizes",
            "unmasked_layers", "plan_ratios", "kappa", "winner", "winner_score", "achieved",
            "acceptance_rate", "drawn")},
        **search_cost(method, info),
    }  # fmt: skip


def search_cost(method: str, info: dict[str, Any]) -> dict[str, Any]:
    """The random search's candidate scoring, apart from the final training (else nothing)."""
    if method != "random":
        return {}
    o = info["options"]
    return {"search": {
        "candidates": o["candidates"], "score_steps": o["score_steps"],
        "steps": o["candidates"] * o["score_steps"], "seconds": info["search_seconds"],
        "holdout_images": HOLDOUT[method],
        "scores": [c["score"] for c in info["candidates"]],
        "flops": [c["flops_ratio"] for c in info["candidates"]],
    }}  # fmt: skip


def table(method: str) -> None:
    rows: dict[str, dict[str, Any]] = {}
    for p in sorted(RESULTS.glob(f"{method}_*.json")):
        r = json.loads(p.read_text())
        if r["arm"] != f"{method}_{r['arch']}":  # a tagged variant (e.g. a lambda run)
            continue
        rows[r["arch"]] = {method: r}
        uniform = RESULTS / f"uniform_{r['arch']}.json"
        if uniform.exists():
            rows[r["arch"]]["uniform"] = json.loads(uniform.read_text())
    search = method == "random"
    print(f"| architecture | {method} top-1 % | FLOPs | params | exported vs masked "
          "| uniform l1 top-1 % | FLOPs | wall s |" + (" search: steps, s |" if search else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if search else ""))
    for arch, by in rows.items():
        m, u = by.get(method), by.get("uniform")
        cells = [arch]
        cells += ([f"{m['top1']:.2f}", f"{m['flops']:.3f}", f"{m['params']:.3f}",
                   diff_cell(m["export_max_diff"])] if m else ["", "", "", ""])  # fmt: skip
        cells += [f"{u['top1']:.2f}", f"{u['flops']:.3f}"] if u else ["", ""]
        cells += [f"{m['seconds']:.0f}" if m else ""]
        if search:
            s = m["search"]
            cells += [f"{s['candidates']} x {s['score_steps']} = {s['steps']}, {s['seconds']:.0f}"]
        print("| " + " | ".join(cells) + " |")


def diff_cell(diff: float | None) -> str:
    return "- (prunes physically)" if diff is None else f"{diff:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("method", choices=("chex", "bwcp", "random"))
    ap.add_argument("arch", nargs="?")
    ap.add_argument("--uniform", action="store_true", help="the uniform-l1 arm instead")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="override a method option (YAML value); repeatable")
    ap.add_argument("--tag", default="", help="suffix of the record's name")
    args = ap.parse_args()
    if args.table:
        table(args.method)
        return
    torch.set_num_threads(1)
    method = "uniform" if args.uniform else args.method
    for item in args.opt:
        key, _, value = item.partition("=")
        OPTIONS[method] = {**OPTIONS[method], key: yaml.safe_load(value)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{method}_{args.arch}{args.tag}"
    args.tag_name = name
    record = run(args, method)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("arm", "top1", "flops", "export_max_diff")}))


if __name__ == "__main__":
    main()
