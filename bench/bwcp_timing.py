"""Training-step time of BWCP against plain batch norm, measured side by side (ResNet-20).

One SGD step (forward, cross-entropy, backward, update) at batch 128 of:

    bn            ResNet-20 with BatchNorm2d, NCHW
    bw            every BN replaced by BatchWhitening2d (group 16, T = 5)
    bwcp          bw + BWCP's Gumbel-softmax masks (probabilities from the running
                  whitening, shared per residual stage) + the sparsity loss
    *_cl          the same in channels_last (the dense baseline's layout)

all interleaved round-robin in one process, so load changes hit every variant
alike. Run on the whole machine (PRUNELAB_SLOT_ALL=1 bench/slot ...); takes about
three minutes. Writes bench/results/bwcp_timing.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import prunelab
from prunelab.atomic import atomic_write_text
from prunelab.layers import convert_batchnorm
from prunelab.methods.bwcp import BWCPOptions, prepare

OUT = Path("bench/results/bwcp_timing.json")


def step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, extra: Callable[[], torch.Tensor] | None
) -> Callable[[], None]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if extra is not None:
            loss = loss + extra()
        loss.backward()
        opt.step()

    return step


def prepare_bwcp(
    example: torch.Tensor, channels_last: bool
) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    """ResNet-20 with BWCP's whitening, Gumbel masks and sparsity loss."""
    model = prunelab.create("resnet20")
    gates = prepare(model, example, BWCPOptions())
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, lambda: gates.sparsity_loss(4e-5, 8e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    threads = int(os.environ.get("PRUNELAB_THREADS", "2"))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    ex = torch.zeros(1, 3, 32, 32)

    bn = prunelab.create("resnet20")
    bn_cl = prunelab.create("resnet20").to(memory_format=torch.channels_last)
    bw = prunelab.create("resnet20")
    convert_batchnorm(bw)
    bwcp = prepare_bwcp(ex, channels_last=False)
    bwcp_cl = prepare_bwcp(ex, channels_last=True)
    bw_cl = copy.deepcopy(bw).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    runners = {
        "bn": step_fn(bn, x, y, None),
        "bn_cl": step_fn(bn_cl, x_cl, y, None),
        "bw": step_fn(bw, x, y, None),
        "bw_cl": step_fn(bw_cl, x_cl, y, None),
        "bwcp": step_fn(bwcp[0], x, y, bwcp[1]),
        "bwcp_cl": step_fn(bwcp_cl[0], x_cl, y, bwcp_cl[1]),
    }
    samples: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for _ in range(args.warmup):
        for fn in runners.values():
            fn()
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            t0 = time.perf_counter()
            runners[name]()
            samples[name].append((time.perf_counter() - t0) * 1000)
    median = {k: statistics.median(v) for k, v in samples.items()}
    best_bn = min(median["bn"], median["bn_cl"])
    result = {
        "batch": args.batch, "threads": threads, "repeats": args.repeats,
        "median_ms": median,
        "p10_p90_ms": {k: [sorted(v)[len(v) // 10], sorted(v)[-1 - len(v) // 10]]
                       for k, v in samples.items()},
        "bwcp_vs_bn_nchw": median["bwcp"] / median["bn"],
        "bwcp_cl_vs_bn_cl": median["bwcp_cl"] / median["bn_cl"],
        "best_bwcp_vs_best_bn": min(median["bwcp"], median["bwcp_cl"]) / best_bn,
    }  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT, json.dumps(result, indent=1))
    for k, v in median.items():
        print(f"{k:6s} {v:8.1f} ms  ({v / median['bn']:.2f}x bn NCHW, {v / best_bn:.2f}x best bn)")


if __name__ == "__main__":
    main()
