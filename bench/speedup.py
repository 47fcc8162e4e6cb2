"""Real speedups of pruned models on this CPU, and prunelab against Torch-Pruning.

Part 1 (inference): torchvision models pruned to about 50% of their FLOPs
(MACs) with a uniform L1 plan, timed at batch 8 with 2 threads, each in the
memory layout that suits it, all models of one architecture interleaved in
one run. Speedup efficiency = measured speedup / (baseline FLOPs / pruned
FLOPs): 1.0 means the FLOPs saved turned fully into time saved.
The same with Torch-Pruning 1.6.1 at the same pruning ratio, and the time
each library takes to trace and prune.

Part 2 (training): one training step (batch 128, 2 threads) of CIFAR
ResNet-20/56 pruned to about 50% FLOPs, against the dense model.

    python bench/speedup.py                 # everything (about 20 minutes)
    python bench/speedup.py --part train    # training steps only
Writes bench/results/speedup.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

import prunelab
from prunelab import planners
from prunelab.graph.cost import base_cost, plan_cost
from prunelab.metrics import compare_latency, compare_train_step

INFERENCE_MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121"]
TRAIN_MODELS = ["resnet20", "resnet56"]
TARGET = 0.5


def prunelab_prune(
    model: nn.Module, x: torch.Tensor, round_to: int, shortcuts: bool = True
) -> tuple[nn.Module, float]:
    start = time.perf_counter()
    graph = prunelab.trace(model, x)
    plan = planners.for_cost(
        model, graph, TARGET, criterion="l1", round_to=round_to, shortcuts=shortcuts
    )
    pruned = prunelab.prune(model, plan)
    elapsed = time.perf_counter() - start
    keep = plan_cost(plan).flops / base_cost(graph).flops
    assert abs(keep - TARGET) < 0.02, keep
    return pruned, elapsed


def uniform_keep_fraction(model: nn.Module, x: torch.Tensor) -> float:
    """The kept channel fraction prunelab's uniform plan chose (to give Torch-Pruning)."""
    graph = prunelab.trace(model, x)
    plan = planners.for_cost(model, graph, TARGET, criterion="l1")
    kept = sum(plan.kept(g.index) for g in graph.prunable)
    return kept / sum(g.size for g in graph.prunable)


def torch_pruning_prune(model: nn.Module, x: torch.Tensor, keep: float) -> tuple[nn.Module, float]:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    start = time.perf_counter()
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=1 - keep,
        ignored_layers=[classifier],
    )
    pruner.step()
    return model, time.perf_counter() - start


def _median_seconds(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def trace_part() -> list[dict]:
    """Graph building alone (median of 5): prunelab.trace vs Torch-Pruning's dependency graph."""
    import torch_pruning as tp

    rows = []
    x = torch.randn(1, 3, 224, 224)
    for name in [*INFERENCE_MODELS, "resnet18", "vgg16_bn", "regnet_x_400mf"]:
        model = prunelab.create(name).eval()
        ours = _median_seconds(lambda m=model: prunelab.trace(m, x))
        theirs = _median_seconds(lambda m=model: tp.DependencyGraph().build_dependency(m, x))
        rows.append({"model": name, "prunelab_trace_s": ours, "tp_graph_s": theirs,
                     "ratio": ours / theirs})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def best_layout(stats: dict[str, prunelab.metrics.LatencyStats], name: str) -> tuple[str, float]:
    nchw, cl = stats[f"{name}/nchw"].median_ms, stats[f"{name}/cl"].median_ms
    return ("channels_last", cl) if cl < nchw else ("nchw", nchw)


def inference_part(repeats: int) -> list[dict]:
    rows = []
    for name in INFERENCE_MODELS:
        torch.manual_seed(0)
        dense = prunelab.create(name).eval()
        x1 = torch.randn(1, 3, 224, 224)
        x = torch.randn(8, 3, 224, 224)
        keep = uniform_keep_fraction(dense, x1)
        variants = {"dense": (dense, 0.0)}
        variants["prunelab"] = prunelab_prune(dense, x1, round_to=1)
        variants["prunelab_r8"] = prunelab_prune(dense, x1, round_to=8)
        # Residual-coupled groups left whole: the block inputs and outputs keep their
        # width, the pruned channels are all inside blocks (CHEX's default strategy).
        try:
            variants["prunelab_inner_r8"] = prunelab_prune(dense, x1, 8, shortcuts=False)
        except prunelab.InfeasibleBudgetError as exc:  # too little FLOPs inside the blocks
            print(f"{name}: no inner-only plan at {TARGET:.0%} FLOPs ({exc})", flush=True)
        variants["torch_pruning"] = torch_pruning_prune(dense, x1, keep)
        flops = {k: prunelab.count(m, x1).flops for k, (m, _) in variants.items()}
        # Deployment: batch norms folded into the convolutions before them, dense and
        # pruned alike (what remains scales with the FLOPs more closely).
        for k in [k for k in ("dense", "prunelab_r8", "prunelab_inner_r8") if k in variants]:
            variants[f"{k}+fold"] = (prunelab.fold_batch_norms(variants[k][0]), variants[k][1])
            flops[f"{k}+fold"] = flops[k]
        models, layouts = {}, {}
        for k, (m, _) in variants.items():
            for layout in ("nchw", "cl"):
                models[f"{k}/{layout}"] = m
                layouts[f"{k}/{layout}"] = layout == "cl"
        stats = compare_latency(models, x, repeats=repeats, threads=2, channels_last=layouts)
        for k, (_, prune_s) in variants.items():
            baseline = "dense+fold" if k.endswith("+fold") else "dense"
            dense_layout, dense_ms = best_layout(stats, baseline)
            layout, ms = best_layout(stats, k)
            reduction = flops["dense"] / flops[k]
            speedup = dense_ms / ms
            rows.append(
                {
                    "model": name,
                    "variant": k,
                    "flops_ratio": flops[k] / flops["dense"],
                    "latency_ms": ms,
                    "layout": layout,
                    "speedup": speedup,
                    "efficiency": speedup / reduction,
                    "trace_prune_s": prune_s,
                    "baseline": baseline,
                    "dense_layout": dense_layout,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def train_part(repeats: int) -> list[dict]:
    rows = []
    for name in TRAIN_MODELS:
        torch.manual_seed(0)
        dense = prunelab.create(name)
        x1 = torch.randn(1, 3, 32, 32)
        x = torch.randn(128, 3, 32, 32)
        y = torch.randint(0, 10, (128,))
        keep = uniform_keep_fraction(dense.eval(), x1)
        variants = {"dense": dense}
        for r in (1, 8, 16):
            variants[f"prunelab_r{r}"] = prunelab_prune(dense, x1, round_to=r)[0]
        for r in (8, 16):  # block outputs whole: only widths inside blocks change
            try:
                variants[f"prunelab_inner_r{r}"] = prunelab_prune(dense, x1, r, shortcuts=False)[0]
            except prunelab.InfeasibleBudgetError as exc:  # too little FLOPs inside the blocks
                print(f"{name}: no inner-only plan at {TARGET:.0%} FLOPs ({exc})", flush=True)
        variants["torch_pruning"] = torch_pruning_prune(dense, x1, keep)[0]
        flops = {k: prunelab.count(m, x1).flops for k, m in variants.items()}
        models, layouts = {}, {}
        for k, m in variants.items():
            for layout in ("nchw", "cl"):
                models[f"{k}/{layout}"] = m
                layouts[f"{k}/{layout}"] = layout == "cl"
        stats = compare_train_step(models, x, y, repeats=repeats, threads=2, channels_last=layouts)
        _, dense_ms = best_layout(stats, "dense")
        for k in variants:
            layout, ms = best_layout(stats, k)
            speedup = dense_ms / ms
            rows.append(
                {
                    "model": name,
                    "variant": k,
                    "flops_ratio": flops[k] / flops["dense"],
                    "step_ms": ms,
                    "nchw_ms": stats[f"{k}/nchw"].median_ms,
                    "cl_ms": stats[f"{k}/cl"].median_ms,
                    "layout": layout,
                    "speedup": speedup,
                    "efficiency": speedup * flops[k] / flops["dense"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "inference", "train", "trace"], default="all")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="bench/results/speedup.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}

    def save() -> None:  # after every part, so a failure later keeps what was measured
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out)

    if args.part in ("all", "inference"):
        results["inference"] = inference_part(args.repeats)
        keys = ["model", "variant", "flops_ratio", "latency_ms", "layout", "speedup",
                "efficiency", "trace_prune_s"]  # fmt: skip
        print(markdown(results["inference"], keys))
        save()
    if args.part in ("all", "trace"):
        results["trace"] = trace_part()
        print(markdown(results["trace"], ["model", "prunelab_trace_s", "tp_graph_s", "ratio"]))
        save()
    if args.part in ("all", "train"):
        results["train"] = train_part(args.repeats)
        keys = ["model", "variant", "flops_ratio", "nchw_ms", "cl_ms", "speedup", "efficiency"]
        print(markdown(results["train"], keys))
        save()


if __name__ == "__main__":
    main()
