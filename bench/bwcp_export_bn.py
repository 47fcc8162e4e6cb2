"""Why BWCP* lost accuracy in its first fine-tune epoch: the exported BatchNorm statistics.

BWCP's export folds each BW layer into its convolution and a BatchNorm2d. The earlier
export gave that BatchNorm2d identity statistics (mean 0, variance 1 - eps, weight 1): the
evaluation map is exact, but a fine-tune runs it in training mode, where it normalises
the folded output z by its batch statistics and subtracts z's mean a second time. The
export now matches the statistics to z (`bwcp_export._folded_bn`, `export_bn: matched`).

This script takes a model exported the earlier way (the from-scratch league's bwcp arm),
re-expresses each identity BatchNorm2d with z's statistics measured on training batches
(the same evaluation map), and reports for both versions: test top-1 in evaluation, test
top-1 with training-mode BatchNorm (batch statistics, what the first fine-tune step
sees; on shuffled test batches, as the test loader is sorted by class), and the test
top-1 after one fine-tune epoch at BWCP*'s lr.

    PRUNELAB_DATA=... python bench/bwcp_export_bn.py \
        bench/results/leagues/scratch/arms/bwcp-s0/model.pt --out bench/results/bwcp_export_bn.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import prunelab
from prunelab.atomic import atomic_write_text
from prunelab.data import build_data, in_random_order
from prunelab.methods.bwcp_export import carry_statistics
from prunelab.methods.finetune import accuracy
from prunelab.train import TrainConfig, Trainer


def identity_norms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """The BatchNorm2d layers the earlier export wrote: mean 0, variance 1 - eps, weight 1."""
    return {
        n: m for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and bool((m.running_mean == 0).all())
        and torch.allclose(m.running_var, torch.full_like(m.running_var, 1 - m.eps))
        and bool((m.weight == 1).all())
    }  # fmt: skip


@torch.no_grad()
def match_statistics(model: nn.Module, loader: Any, batches: int) -> nn.Module:
    """A copy whose identity norms carry their inputs' statistics, with the same eval map."""
    out = copy.deepcopy(model).eval()
    norms = identity_norms(out)
    sums: dict[str, list[torch.Tensor]] = {n: [] for n in norms}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, name=n: sums[name].append(args[0].transpose(0, 1).flatten(1)))
        for n, m in norms.items()]  # fmt: skip
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        out(x)
    for h in hooks:
        h.remove()
    for name, bn in norms.items():
        z = torch.cat(sums[name], dim=1)
        carry_statistics(bn, bn.bias.clone(), z.mean(1), z.var(1))
    return out


@torch.no_grad()
def train_mode_accuracy(model: nn.Module, loader: Any) -> float:
    """Top-1 with BatchNorm on batch statistics (running statistics left untouched)."""
    probe = copy.deepcopy(model).train()
    for m in probe.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0  # batch statistics in the forward pass, running ones unchanged
    correct = total = 0
    for x, y in loader:
        correct += int((probe(x).argmax(1) == y).sum())
        total += int(y.numel())
    return 100.0 * correct / total


def one_epoch(model: nn.Module, data: Any, lr: float, seed: int) -> dict[str, Any]:
    config = TrainConfig(epochs=1, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4,
                         schedule="cosine", warmup_epochs=0, threads=1, seed=seed,
                         quiet=True)  # fmt: skip
    final = Trainer(copy.deepcopy(model), data, config).fit()
    return {"test_top1": final.get("top1"), "train_top1": final.get("train_top1")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a BWCP model exported with identity statistics")
    p.add_argument("--batches", type=int, default=50, help="training batches for z's statistics")
    p.add_argument("--lr", type=float, default=0.02, help="BWCP*'s fine-tune lr")
    p.add_argument("--no-finetune", action="store_true", help="skip the one-epoch fine-tunes")
    p.add_argument("--out", type=Path, default=Path("bench/results/bwcp_export_bn.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = time.perf_counter()
    data = build_data("cifar10_jpg", batch_size=128, cutout=8)
    model = prunelab.load(args.model).eval()
    norms = identity_norms(model)
    if not norms:
        raise SystemExit(f"{args.model}: no identity-statistics BatchNorm2d "
                         "(not a model of the earlier export)")
    matched = match_statistics(model, data.train, args.batches)
    rows = {}
    for name, m in (("identity", model), ("matched", matched)):
        mixed = in_random_order(data.test)  # the same batches for both (the split is class-sorted)
        rows[name] = {"eval_top1": accuracy(m, data.test),
                      "train_mode_top1": train_mode_accuracy(m, mixed)}  # fmt: skip
        if not args.no_finetune:
            rows[name]["after_one_epoch"] = one_epoch(m, data, args.lr, seed=0)
        print(name, rows[name], flush=True)
    record = {"model": str(args.model), "identity_norms": len(norms), "batches": args.batches,
              "lr": args.lr, "rows": rows, "seconds": time.perf_counter() - start}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
