"""DBP's block importance with the hold-out split in its own order and in a random order.

DBP fits a linear probe on one half of the probe batches and scores it on the other.
The hold-out split of an image-folder data set is sorted by class, so before
2026-12-03 the probes were fitted on classes 0-4 and scored on classes 5-9: every
probe accuracy was near zero and the gains (the depth ranking) were noise. This
script measures, on the trained model, each removable block's probe accuracy and
gain both ways, and the class counts of the two halves.

    PRUNELAB_DATA=... python bench/dwr_probe_order.py --out bench/results/dwr_probe_order.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch

import prunelab
from prunelab.atomic import atomic_write_text
from prunelab.cli.setup import checkpoint_path
from prunelab.data import build_data, in_random_order
from prunelab.graph.blocks import find_removable_blocks
from prunelab.methods.dwr_probe import dbp_importance


def halves(batches: list, num_classes: int) -> dict[str, Any]:
    """DBP's split of the batches and the class counts of each half."""
    half = len(batches) // 2
    count = [torch.cat([y for _, y in part]).bincount(minlength=num_classes).tolist()
             for part in (batches[:half], batches[half:])]  # fmt: skip
    return {"fit": batches[:half], "score": batches[half:], "classes": count}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:resnet20_cifar10_jpg")
    p.add_argument("--batches", type=int, default=40, help="probe batches (dwr's probe_batches)")
    p.add_argument("--out", type=Path, default=Path("bench/results/dwr_probe_order.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = build_data("cifar10_jpg", batch_size=128, holdout=5000)
    model = prunelab.load(checkpoint_path(args.model)).eval()
    blocks = [b.name for b in find_removable_blocks(model, torch.zeros(1, 3, 32, 32))]
    record: dict[str, Any] = {"model": args.model, "batches": args.batches, "blocks": blocks}
    for order, loader in (("split", data.holdout), ("random", in_random_order(data.holdout))):
        h = halves(list(itertools.islice(loader, args.batches)), data.num_classes)
        gains = dbp_importance(model, blocks, h["fit"], h["score"], data.num_classes)
        ranking = sorted(blocks, key=lambda b: gains[b])
        record[order] = {"classes_fit_half": h["classes"][0],
                         "classes_score_half": h["classes"][1],
                         "gain": gains, "removal_order": ranking}  # fmt: skip
        print(order, json.dumps(record[order]), flush=True)
    record["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
