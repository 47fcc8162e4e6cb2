"""COCO128 detectors from scratch: dense vs uniform L1 vs CHEX at 50% FLOPs, same epochs.

Every arm runs the user's path (`prunelab train` / `prunelab prune` on
configs/chex_ssdlite_coco128.yaml, or with `--model maskrcnn` on
configs/chex_maskrcnn_coco128.yaml: Mask R-CNN on a ResNet-18-FPN, COCO128
instance segmentation, box and mask mAP) with the same recipe and epochs:

    dense      train the dense torchvision ssdlite320_mobilenet_v3_large (weights=None,
               weights_backbone=None) for EPOCHS epochs
    uniform    uniform L1 to 50% FLOPs at initialisation (channels ranked by the L1 norm
               of their fresh weights), then EPOCHS epochs of training
    chex       CHEX from scratch to 50% FLOPs for EPOCHS epochs (update every epoch)

Inputs are letterboxed to --size (160 by default; the model's transform resizes to the
same size); train2017's 128 images train, val2017's 128 images evaluate (COCO box
mAP@[.5:.95] and mAP@.5 by pycocotools, 300 detections per image, score > 0.001, the
torchvision defaults). FLOPs are MACs of every convolution of the detector; latency is
measured on one image, 1 thread: `latency` times each arm's network alone (backbone
and heads) and the whole detector (transform, box decoding and NMS too), in turns.
128 images train no detector from scratch: expect mAP near zero.

    PRUNELAB_DATA=../shared/data nice -n 10 .venv/bin/python bench/detection_coco128.py \\
        dense uniform chex latency report --epochs 4 --size 128

Each arm writes bench/results/detection_runs/<arm>.json (Mask R-CNN:
detection_runs/maskrcnn/<arm>.json); `report` prints their table
(bench/results/detection_coco128.md holds it and the notes). The full-length run for a
later session: `--epochs 120 --size 160` (about 1 min per epoch per arm on one free core).
A killed arm resumes from its last epoch checkpoint when run again (same arguments).

    PRUNELAB_DATA=../shared/data nice -n 10 .venv/bin/python bench/detection_coco128.py \\
        uniform chex report --model maskrcnn --epochs 4 --size 128
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from prunelab import io
from prunelab.cli.config import load_yaml
from prunelab.cli.prune_cmd import run_prune
from prunelab.cli.train_cmd import run_train
from prunelab.metrics import count
from prunelab.models import create_from_arch
from prunelab.models.detection_core import tensor_program

CONFIGS = {"ssdlite": Path("configs/chex_ssdlite_coco128.yaml"),
           "maskrcnn": Path("configs/chex_maskrcnn_coco128.yaml")}
ARMS = ("dense", "uniform", "chex")


def results_dir(args: argparse.Namespace) -> Path:
    base = Path("bench/results/detection_runs")
    return base if args.model == "ssdlite" else base / args.model


def runs_dir(args: argparse.Namespace) -> Path:
    base = Path("runs/detection_bench")
    return base if args.model == "ssdlite" else base / args.model


def config_for(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    config = copy.deepcopy(load_yaml(CONFIGS[args.model]))
    config["data"]["image_size"] = args.size
    # resume: a killed arm continues from its last epoch checkpoint (a fresh folder starts over)
    config["train"].update({"epochs": args.epochs, "eval_every": args.epochs, "resume": True})
    if args.steps_per_epoch:
        config["train"]["steps_per_epoch"] = args.steps_per_epoch
    if args.target is not None:
        config["target"] = args.target
    if arm == "uniform":
        config["method"] = {"name": "uniform", "criterion": "l1", "round_to": 8}
    config["run_dir"] = str(runs_dir(args) / arm)
    config["quiet"] = False
    return config


def run_arm(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    config = config_for(arm, args)
    t0 = time.perf_counter()
    summary = run_train(config) if arm == "dense" else run_prune(config)
    assert summary is not None
    rows = summary["rows"]
    row = rows[0] if arm == "dense" else rows[1]
    final = summary["info"].get("final") or summary["info"].get("finetune") or {}
    record = {
        "arm": arm, "target": config["target"], "epochs": args.epochs, "size": args.size,
        "map": row["top1"],
        "map50": final.get("map50"), "mask_map": final.get("mask_map"),
        "mask_map50": final.get("mask_map50"), "steps": final.get("steps"),
        "flops": row["flops"], "params": row["params"],
        "latency_ms": row.get("latency_ms"), "seconds": time.perf_counter() - t0,
        "dense_latency_ms": rows[0].get("latency_ms") if arm != "dense" else None,
        "achieved": summary["info"].get("achieved") or summary["info"].get("achieved_flops"),
        "threads": torch.get_num_threads(),
    }
    results_dir(args).mkdir(parents=True, exist_ok=True)
    (results_dir(args) / f"{arm}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))
    return record


def arm_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """The arms' saved models; without a dense arm, the untrained dense model of their recipe
    (its network latency and FLOPs do not depend on the weights)."""
    runs = runs_dir(args)
    loaded = {a: io.load(runs / a / "model.pt") for a in ARMS if (runs / a / "model.pt").exists()}
    if loaded and "dense" not in loaded:
        arch = next(iter(loaded.values())).prunelab_arch
        loaded = {"dense": create_from_arch(arch).eval(), **loaded}
    return loaded


def network_latency(args: argparse.Namespace, repeats: int = 15) -> dict[str, dict[str, float]]:
    """Median ms per image of each arm's network alone (backbone + heads) and whole detector.

    The arms are timed in turns (one call each, repeated), so a change of load on a
    shared machine hits every arm alike. The whole detector's time includes box
    decoding and NMS over its candidates, which depends on how many boxes pass the
    0.001 score threshold: for barely trained detectors that part varies by model.
    """
    loaded = arm_models(args)
    x = torch.rand(1, 3, args.size, args.size)
    costs = {a: count(tensor_program(m), x) for a, m in loaded.items()}
    (results_dir(args) / "costs.json").write_text(json.dumps(
        {a: {"flops": c.flops, "params": c.params} for a, c in costs.items()}, indent=1))
    times: dict[str, dict[str, list[float]]] = {a: {"network": [], "detector": []} for a in loaded}
    with torch.no_grad():
        for i in range(repeats + 2):
            for arm, model in loaded.items():
                for part, fn in (("network", tensor_program(model)), ("detector", model)):
                    t0 = time.perf_counter()
                    fn(x)
                    if i >= 2:  # two warm-up rounds
                        times[arm][part].append(1e3 * (time.perf_counter() - t0))
    out = {a: {k: statistics.median(v) for k, v in parts.items()} for a, parts in times.items()}
    (results_dir(args) / "latency.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))
    return out


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report(args: argparse.Namespace) -> str:
    results = results_dir(args)
    records = {a: json.loads((results / f"{a}.json").read_text())
               for a in ARMS if (results / f"{a}.json").exists()}
    path = results / "costs.json"  # tensor-program counts (`latency`), as the planners budget
    for arm, cost in (json.loads(path.read_text()) if path.exists() else {}).items():
        records.setdefault(arm, {"arm": arm, "epochs": 0, "map": None, "map50": None,
                                 "latency_ms": None, "seconds": 0.0}).update(cost)
    records = {a: records[a] for a in ARMS if a in records}
    if "dense" in records and records["dense"].get("latency_ms") is None:
        others = [r["dense_latency_ms"] for r in records.values() if r.get("dense_latency_ms")]
        records["dense"]["latency_ms"] = min(others) if others else None
    base = records.get("dense", {})
    path = results / "latency.json"
    lat = json.loads(path.read_text()) if path.exists() else {}
    lines = ["| arm | epochs | box mAP@[.5:.95] (%) | mAP@.5 (%) | mask mAP@[.5:.95] (%) | "
             "mask mAP@.5 (%) | FLOPs (MACs) | params | network latency | "
             "detector latency (prune's table) | wall time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, r in records.items():
        flops = f"{r['flops'] / 1e6:.0f} M"
        params = f"{r['params'] / 1e6:.2f} M"
        if base and arm != "dense":
            flops += f" ({r['flops'] / base['flops']:.0%})"
            params += f" ({r['params'] / base['params']:.0%})"
        lines.append(f"| {arm} | {r['epochs']} | {_fmt(r['map'], '.3f')} | "
                     f"{_fmt(r['map50'], '.3f')} | {_fmt(r.get('mask_map'), '.3f')} | "
                     f"{_fmt(r.get('mask_map50'), '.3f')} | {flops} | {params} | "
                     f"{_fmt(lat.get(arm, {}).get('network'), '.1f')} ms | "
                     f"{_fmt(r['latency_ms'], '.0f')} ms | {r['seconds'] / 60:.0f} min |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", nargs="+", choices=[*ARMS, "latency", "report"])
    ap.add_argument("--model", choices=sorted(CONFIGS), default="ssdlite")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="smoke tests only")
    ap.add_argument("--repeats", type=int, default=15, help="latency rounds")
    ap.add_argument("--target", type=float, default=None,
                    help="FLOPs fraction (default: the config's 0.5)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for arm in args.arms:
        if arm == "report":
            print(report(args))
        elif arm == "latency":
            network_latency(args, args.repeats)
        else:
            run_arm(arm, args)


if __name__ == "__main__":
    main()
