"""How well do the random search's cheap scores rank candidates? (issue 18, random search)

From the committed ResNet-20 CIFAR-10 (JPEG) checkpoint at 50% FLOPs: sample the
search's 32 candidates (seed 0, l1 ranking, rounded to 8, as the league's random-32 arm),
score each with the search's two label-free scorers ("bn": BN recalibration, the
default; "reconstruct": recalibration + 50 Adam steps of feature-map reconstruction
without labels, the supplement's Fig. 3), then fine-tune each candidate briefly the
same way (`--steps` SGD steps, lr cosine from `--lr`, the same batches
for every candidate) and measure test top-1. The rank correlation (Spearman and
Kendall) of each scorer with the fine-tuned top-1 says which ranker to trust.

Each candidate's record goes to <out>/candidate_<i>.json when it is done (a rerun
skips it); the summary to <out>/summary.json. `--summarise` writes the summary of the
candidates done so far without running more (for a run cut short).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/random_rankers.py
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from scipy import stats

import prunelab
from prunelab import planners
from prunelab.atomic import atomic_write_bytes
from prunelab.data import build_data
from prunelab.graph.cost import base_cost, plan_cost
from prunelab.methods.finetune import accuracy
from prunelab.methods.random_scoring import ScoringSetup, replay, score_candidate
from prunelab.methods.random_search import sample_architectures

CHECKPOINT = Path("src/prunelab/checkpoints/resnet20_cifar10_jpg.pt")
OUT = Path("bench/results/random_rankers")
SCORERS = ("bn", "reconstruct")


def finetune(model: torch.nn.Module, batches: Any, steps: int, lr: float) -> None:
    """`steps` SGD steps (Nesterov, wd 5e-4), lr cosine from `lr` to 0: a short fine-tune."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)  # fmt: skip
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, default=float).encode()
    atomic_write_bytes(path, lambda f: f.write(text))


def correlations(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Spearman rho and Kendall tau of each scorer against the fine-tuned top-1."""
    truth = [r["finetuned_top1"] for r in records]
    out = {}
    for name in SCORERS:
        values = [r["scores"][name] for r in records]
        rho, rho_p = stats.spearmanr(values, truth)
        tau, tau_p = stats.kendalltau(values, truth)
        best = max(range(len(values)), key=values.__getitem__)
        out[name] = {
            "spearman": float(rho), "spearman_p": float(rho_p),
            "kendall": float(tau), "kendall_p": float(tau_p),
            "picked": best, "picked_finetuned_top1": truth[best],
            "picked_rank": 1 + sorted(truth, reverse=True).index(truth[best]),
        }  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60, help="fine-tune steps per candidate")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--score-steps", type=int, default=50)
    parser.add_argument("--bn-batches", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--data", choices=["cifar10_jpg", "synthetic"], default="cifar10_jpg")
    parser.add_argument("--summarise", action="store_true", help="summarise the finished ones")
    args = parser.parse_args()
    if args.summarise:
        done = [json.loads(p.read_text()) for p in sorted(args.out.glob("candidate_*.json"))]
        summarise(done, args)
        return
    torch.set_num_threads(args.threads)
    if args.data == "synthetic":  # smoke test of this script
        data = build_data("synthetic", batch_size=32, holdout=64, n_train=512, n_test=128)
    else:
        data = build_data("cifar10_jpg", batch_size=128, holdout=2000, seed=0)
    dense = prunelab.load(args.checkpoint).eval()
    graph = prunelab.trace(dense, torch.zeros(1, 3, 32, 32))
    groups = planners.select_groups(graph, True)
    sampled = sample_architectures(graph, groups, 0.5, "flops", args.candidates, 0.1, 0.02, 8,
                                   "rescale", 0)  # fmt: skip
    scores = planners.score_groups(dense, groups, "l1", None)
    state = data.train.state_dict()
    base = base_cost(graph)
    records = []
    for i, counts in enumerate(sampled.counts):
        path = args.out / f"candidate_{i:02d}.json"
        if path.exists():
            records.append(json.loads(path.read_text()))
            continue
        t0 = time.perf_counter()
        plan = planners.plan_from_counts(graph, scores, counts)
        pruned = prunelab.prune(dense, plan)
        values, seconds = {}, {}
        for mode in SCORERS:
            s0 = time.perf_counter()
            setup = ScoringSetup(mode, data, state, bn_batches=args.bn_batches,
                                 steps=args.score_steps)  # fmt: skip
            values[mode] = score_candidate(setup, copy.deepcopy(pruned), dense, plan)
            seconds[mode] = time.perf_counter() - s0
        # The fine-tune starts from the pruned weights, on the batches after the scorers' ones.
        tuned = copy.deepcopy(pruned)
        finetune(tuned, replay(data, state), args.steps, args.lr)
        record = {
            "index": i,
            "kept": {graph.groups[g].name: k for g, k in counts.items()},
            "flops_ratio": plan_cost(plan).flops / base.flops,
            "scores": values, "score_seconds": seconds,
            "finetuned_top1": accuracy(tuned, data.test),
            "finetune_steps": args.steps, "finetune_lr": args.lr,
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        write_json(path, record)
        records.append(record)
        print(f"[{i + 1}/{len(sampled.counts)}] " + ", ".join(
            f"{k} {v:.2f}" for k, v in values.items()) +
            f", fine-tuned {record['finetuned_top1']:.2f}, {record['seconds']:.0f}s",
            flush=True)  # fmt: skip
    summarise(records, args)


def summarise(records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Write and print the rank correlations of `records` (needs at least 3)."""
    if len(records) < 3:
        raise SystemExit(f"only {len(records)} candidates done: nothing to correlate yet")
    summary = {
        "candidates": len(records), "steps": args.steps, "lr": args.lr,
        "score_steps": args.score_steps, "bn_batches": args.bn_batches,
        "correlations": correlations(records),
        "best_finetuned_top1": max(r["finetuned_top1"] for r in records),
    }  # fmt: skip
    write_json(args.out / "summary.json", summary)
    print(json.dumps(summary["correlations"], indent=1), flush=True)


if __name__ == "__main__":
    main()
