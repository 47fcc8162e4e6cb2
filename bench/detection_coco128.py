"""SSD-lite on COCO128 from scratch: dense vs uniform L1 vs CHEX at 50% FLOPs, same epochs.

Every arm runs the user's path (`prunelab train` / `prunelab prune` on
configs/chex_ssdlite_coco128.yaml) with the same recipe and number of epochs:

    dense      train the dense torchvision ssdlite320_mobilenet_v3_large (weights=None,
               weights_backbone=None) for EPOCHS epochs
    uniform    uniform L1 to 50% FLOPs at initialisation (channels ranked by the L1 norm
               of their fresh weights), then EPOCHS epochs of training
    chex       CHEX from scratch to 50% FLOPs for EPOCHS epochs (update every epoch)

Inputs are letterboxed to --size (160 by default; the model's transform resizes to the
same size); train2017's 128 images train, val2017's 128 images evaluate (COCO box
mAP@[.5:.95] and mAP@.5 by pycocotools, 300 detections per image, score > 0.001, the
torchvision defaults). FLOPs are MACs of every convolution of the detector; latency is
the whole detector (transform, backbone, heads, box decoding and NMS) on one image,
1 thread. 128 images train no detector from scratch: expect mAP near zero.

    PRUNELAB_DATA=../shared/data nice -n 10 .venv/bin/python bench/detection_coco128.py \\
        dense uniform chex report --epochs 8

Each arm writes bench/results/detection_runs/<arm>.json; `report` writes
bench/results/detection_coco128.md. The full-length run of a later session:
`--epochs 120` (about 1-2 min per epoch per arm on one free core at 160x160).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from prunelab.cli.config import load_yaml
from prunelab.cli.prune_cmd import run_prune
from prunelab.cli.train_cmd import run_train

CONFIG = Path("configs/chex_ssdlite_coco128.yaml")
RESULTS = Path("bench/results/detection_runs")
RUNS = Path("runs/detection_bench")
ARMS = ("dense", "uniform", "chex")


def config_for(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    config = copy.deepcopy(load_yaml(CONFIG))
    config["data"]["image_size"] = args.size
    config["train"].update({"epochs": args.epochs, "eval_every": args.epochs})
    if args.steps_per_epoch:
        config["train"]["steps_per_epoch"] = args.steps_per_epoch
    if arm == "uniform":
        config["method"] = {"name": "uniform", "criterion": "l1", "round_to": 8}
    config["run_dir"] = str(RUNS / arm)
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
        "arm": arm, "epochs": args.epochs, "size": args.size, "map": row["top1"],
        "map50": final.get("map50"), "flops": row["flops"], "params": row["params"],
        "latency_ms": row.get("latency_ms"), "seconds": time.perf_counter() - t0,
        "dense_latency_ms": rows[0].get("latency_ms") if arm != "dense" else None,
        "achieved": summary["info"].get("achieved") or summary["info"].get("achieved_flops"),
        "threads": torch.get_num_threads(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{arm}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))
    return record


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report() -> str:
    records = {a: json.loads((RESULTS / f"{a}.json").read_text())
               for a in ARMS if (RESULTS / f"{a}.json").exists()}
    if "dense" in records and records["dense"].get("latency_ms") is None:
        others = [r["dense_latency_ms"] for r in records.values() if r.get("dense_latency_ms")]
        records["dense"]["latency_ms"] = min(others) if others else None
    base = records.get("dense", {})
    lines = ["| arm | epochs | box mAP@[.5:.95] (%) | mAP@.5 (%) | FLOPs (MACs) | params | "
             "CPU latency (batch 1, 1 thread) | wall time |", "|---|---|---|---|---|---|---|---|"]
    for arm, r in records.items():
        flops = f"{r['flops'] / 1e6:.0f} M"
        params = f"{r['params'] / 1e6:.2f} M"
        if base and arm != "dense":
            flops += f" ({r['flops'] / base['flops']:.0%})"
            params += f" ({r['params'] / base['params']:.0%})"
        lines.append(f"| {arm} | {r['epochs']} | {_fmt(r['map'], '.3f')} | "
                     f"{_fmt(r['map50'], '.3f')} | {flops} | {params} | "
                     f"{_fmt(r['latency_ms'], '.1f')} ms | {r['seconds'] / 60:.0f} min |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", nargs="+", choices=[*ARMS, "report"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="smoke tests only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for arm in args.arms:
        if arm == "report":
            print(report())
        else:
            run_arm(arm, args)


if __name__ == "__main__":
    main()
