"""Latency budgets and pruned models in the runtimes they deploy to (issue 20).

For each model and batch (224x224, 2 threads by default):

* a FLOPs-targeted plan (uniform L1, 50% FLOPs, rounded to 8) and a
  latency-targeted plan (50% of the dense model's measured latency in PyTorch
  eager, per-layer table, verified and nudged, rounding measured by the table),
  with Torch-Pruning 1.6.1 at the FLOPs plan's uniform kept fraction;
* the latency ratio each plan reaches (timed interleaved with the dense model),
  its FLOPs ratio, the table's predicted ratio (the table's own error) and, for
  the latency plan, the error against the 0.5 target;
* the same pruned models in PyTorch eager (faster layout of each), onnxruntime
  and OpenVINO (float32), all variants of one runtime timed round-robin in one
  run: speedup and efficiency = speedup / (dense FLOPs / pruned FLOPs).

Weights are random (no downloads): latency does not depend on their values.

    python bench/runtime_speed.py                       # everything (hours on 2 cores)
    python bench/runtime_speed.py --models mobilenet_v2 --batches 1   # a subset
    python bench/runtime_speed.py --table-error         # table error on CIFAR ResNets too
Writes bench/results/runtime_speed.json (merged per model and batch) and prints markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

import prunelab
from prunelab import planners
from prunelab.atomic import atomic_write_text
from prunelab.graph.cost import base_cost, plan_cost
from prunelab.latency_table import LatencySpec, latency_table, measured_ratio
from prunelab.report import measure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speedup import torch_pruning_prune, uniform_keep_fraction

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121"]
CIFAR = ["resnet20", "resnet56"]
RUNTIMES = ["torch", "onnxruntime", "openvino"]
TARGET = 0.5
OUT = Path(__file__).resolve().parent / "results" / "runtime_speed.json"


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def plans_for(dense: nn.Module, side: int, spec: LatencySpec) -> dict:
    """The FLOPs plan, the latency plan and Torch-Pruning's model, with their numbers."""
    x1 = torch.zeros(1, 3, side, side)
    graph = prunelab.trace(dense, x1)
    table = latency_table(dense, graph, spec, log=log)
    dense_ms = table.dense_ms(graph)
    flops_plan = planners.for_cost(dense, graph, TARGET, criterion="l1", round_to=8)
    t0 = time.perf_counter()
    lat_plan = planners.for_cost(
        dense, graph, TARGET, metric="latency", latency=table, round_to="auto", tolerance=0.02
    )
    plan_seconds = time.perf_counter() - t0
    out = {"table": {"round_to": table.round_to, "round_scores": table.round_scores,
                     "coef": table.coef, "calibration": table.calibration},
           "latency_plan_seconds": plan_seconds, "variants": {}}  # fmt: skip
    base_flops = base_cost(graph).flops
    for label, plan in (("flops_0.5", flops_plan), ("latency_0.5", lat_plan)):
        pruned = prunelab.prune(dense, plan)
        ratio, _ = measured_ratio(dense, pruned, x1, spec)
        out["variants"][label] = {
            "model": pruned, "flops_ratio": plan_cost(plan).flops / base_flops,
            "latency_ratio": ratio, "predicted_ratio": table.predict_plan(plan) / dense_ms,
        }  # fmt: skip
    notes = lat_plan.notes["latency"]
    out["variants"]["latency_0.5"].update(
        target_error=out["variants"]["latency_0.5"]["latency_ratio"] / TARGET - 1,
        verification=notes,
    )
    keep = uniform_keep_fraction(dense, x1)
    tp_model, _ = torch_pruning_prune(dense, x1, keep)
    out["variants"]["torch_pruning"] = {
        "model": tp_model, "flops_ratio": prunelab.count(tp_model, x1).flops / base_flops,
    }  # fmt: skip
    return out


def runtime_part(dense: nn.Module, variants: dict, side: int, batch: int, threads: int,
                 repeats: int, runtimes: list[str]) -> dict:  # fmt: skip
    models = {"dense": dense, **{k: v["model"] for k, v in variants.items()}}
    x1 = torch.zeros(1, 3, side, side)
    inputs = dict.fromkeys(models, x1)
    results = {}
    for runtime in runtimes:
        log(f"timing {list(models)} in {runtime}")
        rows = measure(models, inputs, dict.fromkeys(models), batch, threads, repeats, runtime)
        base = rows[0]
        results[runtime] = {
            r.label: {"ms": r.latency_ms, "layout": r.layout, "speedup": r.speedup,
                      "efficiency": r.speedup * r.flops / base.flops}
            for r in rows
        }  # fmt: skip
    return results


def run_one(name: str, side: int, batch: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    dense = prunelab.create(name).eval()
    spec = LatencySpec(batch=batch, threads=args.threads, repeats=args.repeats,
                       layer_repeats=args.layer_repeats)  # fmt: skip
    log(f"{name} batch {batch}: plans")
    found = plans_for(dense, side, spec)
    timed = runtime_part(dense, found["variants"], side, batch, args.threads, args.repeats,
                         args.runtimes)  # fmt: skip
    for v in found["variants"].values():
        v.pop("model")
    return {"model": name, "side": side, "batch": batch, "threads": args.threads,
            **found, "runtimes": timed}  # fmt: skip


def table_error(name: str, side: int, batch: int, args: argparse.Namespace) -> dict:
    """Predicted against measured latency ratio of the pruned models of one architecture."""
    torch.manual_seed(0)
    dense = prunelab.create(name).eval()
    spec = LatencySpec(batch=batch, threads=args.threads, repeats=args.repeats,
                       layer_repeats=args.layer_repeats)  # fmt: skip
    x1 = torch.zeros(1, 3, side, side)
    graph = prunelab.trace(dense, x1)
    table = latency_table(dense, graph, spec, log=log)
    rows = []
    for target in (0.3, 0.5, 0.7):
        plan = planners.for_cost(dense, graph, target, criterion="l1", round_to=8)
        predicted = table.predict_plan(plan) / table.dense_ms(graph)
        measured, _ = measured_ratio(dense, prunelab.prune(dense, plan), x1, spec)
        rows.append({"flops_target": target, "predicted": predicted, "measured": measured,
                     "error": predicted / measured - 1})  # fmt: skip
        log(f"{name}: {rows[-1]}")
    return {"model": name, "side": side, "batch": batch, "rows": rows}


def save(results: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for key in ("runs", "table_error"):
        merged = {f"{r['model']}/b{r['batch']}": r for r in old.get(key, [])}
        merged.update({f"{r['model']}/b{r['batch']}": r for r in results.get(key, [])})
        results[key] = list(merged.values())
    atomic_write_text(OUT, json.dumps(results, indent=1, default=float))


def markdown(results: dict) -> str:
    lines = ["| model | batch | plan | FLOPs ratio | latency ratio (torch) | table predicted | "
             + " | ".join(f"{r} speedup / eff." for r in RUNTIMES) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(RUNTIMES)]  # fmt: skip
    for run in results.get("runs", []):
        for label, v in run["variants"].items():
            cells = []
            for rt in RUNTIMES:
                r = run["runtimes"].get(rt, {}).get(label)
                cells.append("-" if r is None else f"{r['speedup']:.2f}x / {r['efficiency']:.2f}")
            lat = v.get("latency_ratio")
            pred = v.get("predicted_ratio")
            lines.append(
                f"| {run['model']} | {run['batch']} | {label} | {v['flops_ratio']:.3f} | "
                f"{'-' if lat is None else f'{lat:.3f}'} | {'-' if pred is None else f'{pred:.3f}'}"
                f" | " + " | ".join(cells) + " |"
            )
    for t in results.get("table_error", []):
        for r in t["rows"]:
            lines.append(f"table error {t['model']} b{t['batch']} FLOPs {r['flops_target']}: "
                         f"predicted {r['predicted']:.3f} measured {r['measured']:.3f} "
                         f"({r['error']:+.1%})")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--layer-repeats", type=int, default=7)
    p.add_argument("--runtimes", nargs="+", default=RUNTIMES, choices=RUNTIMES)
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--table-error", action="store_true",
                   help="also the table's error on CIFAR resnet20/56 (batch 8)")  # fmt: skip
    p.add_argument("--only-table-error", action="store_true")
    args = p.parse_args()
    results: dict = {"runs": [], "table_error": []}
    if not args.only_table_error:
        for name in args.models:
            for batch in args.batches:
                results["runs"].append(run_one(name, args.side, batch, args))
                save(dict(results))
    if args.table_error or args.only_table_error:
        for name in CIFAR:
            results["table_error"].append(table_error(name, 32, 8, args))
            save(dict(results))
    save(results)
    print(markdown(json.loads(OUT.read_text())))


if __name__ == "__main__":
    main()
