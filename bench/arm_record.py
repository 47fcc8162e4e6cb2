"""What every pruning benchmark arm records and how it is written (shared by the bench scripts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prunelab.atomic import atomic_write_bytes
from prunelab.metrics.cost import Cost


def cost_fields(model: torch.nn.Module, cost: Cost, dense: Cost) -> dict[str, Any]:
    """FLOPs and params, absolute and as fractions of the dense model, and conv widths."""
    return {
        "flops_ratio": cost.flops / dense.flops,
        "params_ratio": cost.params / dense.params,
        "flops": cost.flops,
        "params": cost.params,
        "widths": {
            n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
        },
    }


def write_record(out: Path, record: dict[str, Any], label: str) -> None:
    """Write `record` as JSON atomically (a rerun skips finished arms) and print its summary."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, default=float).encode()
    atomic_write_bytes(out, lambda f: f.write(text))
    print(
        f"=== {label}: top-1 {record['top1']:.2f}%, flops {record['flops_ratio']:.3f}, "
        f"{record['seconds'] / 60:.1f} min",
        flush=True,
    )
