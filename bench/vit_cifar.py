"""Prune a small vision transformer on CIFAR-10 (JPEG): heads and MLP width, half the FLOPs.

A torchvision `VisionTransformer` (patch 4, 64 tokens + class token, width 96,
6 blocks of 6 heads, MLP 384) is trained from scratch, pruned by L1 norm to
half its FLOPs (MACs, attention matmuls included) with one kept fraction for
every prunable group (attention heads, MLP hidden units; the embedding width
stays: every LayerNorm normalises across it), fine-tuned, and timed. Writes
bench/results/vit_cifar.md.

    python bench/vit_cifar.py                          # short: 10k images, 4 + 2 epochs
    python bench/vit_cifar.py --train 512 --test 1000 --epochs 1 --finetune 1   # smoke run
    python bench/vit_cifar.py --train 50000 --epochs 60 --finetune 20   # the full run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer

from prunelab.atomic import atomic_write_text
from prunelab.data.archive import load_cifar10_jpg
from prunelab.data.arrays import data_root
from prunelab.data.augment import normalize
from prunelab.graph import prune, trace
from prunelab.graph.cost import plan_cost
from prunelab.metrics import count, measure_latency
from prunelab.planners import for_cost

OUT = Path(__file__).resolve().parent.parent / "bench" / "results" / "vit_cifar.md"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def build() -> VisionTransformer:
    return VisionTransformer(
        image_size=32, patch_size=4, num_layers=6, num_heads=6, hidden_dim=96, mlp_dim=384,
        num_classes=10,
    )  # fmt: skip


def batches(x: np.ndarray, y: np.ndarray, size: int, gen: torch.Generator | None):
    order = torch.randperm(len(x), generator=gen) if gen is not None else torch.arange(len(x))
    for i in range(0, len(x), size):
        idx = order[i : i + size].numpy()
        images = torch.from_numpy(x[idx])
        if gen is not None:  # random horizontal flips
            flip = torch.rand(len(idx), generator=gen) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        yield normalize(images, MEAN, STD), torch.from_numpy(y[idx])


def train(model, data, epochs: int, lr: float, seed: int) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * -(-len(data.train_x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    for epoch in range(epochs):
        model.train()
        t0, total = time.perf_counter(), 0.0
        for xb, yb in batches(data.train_x, data.train_y, 128, gen):
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(yb)
        print(f"epoch {epoch + 1}/{epochs} loss {total / len(data.train_x):.3f} "
              f"{time.perf_counter() - t0:.0f}s acc {accuracy(model, data):.2f}%", flush=True)


@torch.no_grad()
def accuracy(model, data) -> float:  # type: ignore[no-untyped-def]
    model.eval()
    right = 0
    for xb, yb in batches(data.test_x, data.test_y, 500, None):
        right += int((model(xb).argmax(1) == yb).sum())
    return 100.0 * right / len(data.test_y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=10000, help="training images used")
    ap.add_argument("--test", type=int, default=10000, help="test images evaluated")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--finetune", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.5, help="FLOPs kept")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_cifar10_jpg(data_root())
    # the archive is sorted by class: subsets are random draws (fixed seed), not the first n
    rng = np.random.default_rng(0)
    train_idx = rng.permutation(len(data.train_y))[: args.train]
    test_idx = rng.permutation(len(data.test_y))[: args.test]
    data.train_x, data.train_y = data.train_x[train_idx], data.train_y[train_idx]
    data.test_x, data.test_y = data.test_x[test_idx], data.test_y[test_idx]
    model = build()
    train(model, data, args.epochs, 1e-3, seed=0)
    dense_acc = accuracy(model, data)
    x = torch.randn(1, 3, 32, 32)
    graph = trace(model.eval(), x)
    plan = for_cost(model, graph, args.target, metric="flops", criterion="l1")
    pruned = prune(model, plan)
    assert (plan_cost(plan).flops, plan_cost(plan).params) == (
        count(pruned, x).flops, count(pruned, x).params
    )
    pruned_acc = accuracy(pruned, data)
    train(pruned, data, args.finetune, 3e-4, seed=1)
    tuned_acc = accuracy(pruned, data)
    dense_cost, pruned_cost = count(model, x), count(pruned, x)
    batch = torch.randn(64, 3, 32, 32)
    dense_ms = measure_latency(model.eval(), batch, threads=1).median_ms
    pruned_ms = measure_latency(pruned.eval(), batch, threads=1).median_ms
    heads = [m.num_heads for m in pruned.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    mlp = [blk.mlp[0].out_features for blk in pruned.encoder.layers]
    lines = [
        "# Pruning a small ViT on CIFAR-10 (JPEG)",
        "",
        f"`python bench/vit_cifar.py --train {args.train} --test {args.test} --epochs "
        f"{args.epochs} --finetune {args.finetune} --target {args.target}` (1 thread).",
        "Model: torchvision VisionTransformer, patch 4, width 96, 6 blocks x 6 heads, MLP 384,",
        "trained from scratch (AdamW, one-cycle, flips). Pruned by L1 to the FLOPs target with",
        "one kept fraction for every head group and MLP group (the embedding width is fixed:",
        "LayerNorm normalises across it), then fine-tuned. FLOPs are MACs, attention included.",
        "",
        "| model | FLOPs (MACs) | params | test acc | latency b64 (ms) |",
        "|---|---|---|---|---|",
        f"| dense | {dense_cost.flops / 1e6:.1f} M | {dense_cost.params / 1e6:.3f} M | "
        f"{dense_acc:.2f}% | {dense_ms:.1f} |",
        f"| pruned, before fine-tuning | {pruned_cost.flops / 1e6:.1f} M | "
        f"{pruned_cost.params / 1e6:.3f} M | {pruned_acc:.2f}% | {pruned_ms:.1f} |",
        f"| pruned + {args.finetune} epochs | {pruned_cost.flops / 1e6:.1f} M | "
        f"{pruned_cost.params / 1e6:.3f} M | {tuned_acc:.2f}% | {pruned_ms:.1f} |",
        "",
        f"Heads kept per block: {heads}; MLP hidden units kept: {mlp}.",
        "",
    ]
    atomic_write_text(OUT, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
