"""CHEX training cost on CPU: wall time per step and per epoch against dense training.

Dense and CHEX (masked) ResNet-20 training alternate in one process on
CIFAR-10 (JPEG), batch 128, channels_last, the same recipe; each run is
`--epochs` short epochs of `--steps` steps with a CHEX update at every epoch
start, so the update cost is measured too. Reported per-epoch time for a full
CIFAR-10 epoch (390 steps) = 390 x step time + one update (the bench recipe
updates once an epoch). Run it with the whole machine:

    PRUNELAB_SLOT_ALL=1 PRUNELAB_DATA=... bench/slot .venv/bin/python bench/chex_timing.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import prunelab
from prunelab.data import build_data
from prunelab.methods.chex import ChexCallback, ChexOptions
from prunelab.train import TrainConfig, Trainer

OUT = Path(os.environ.get("CHEX_TIMING_OUT", "bench/results/chex_runs/timing.json"))
FULL_EPOCH = 390


def one_run(kind: str, data, epochs: int, steps: int, threads: int) -> dict:
    torch.manual_seed(0)
    model = prunelab.create("resnet20", num_classes=10)
    callbacks = []
    cb = None
    if kind == "chex":
        graph = prunelab.trace(model.eval(), torch.zeros(1, 3, 32, 32))
        cb = ChexCallback(graph, 0.5, "flops", ChexOptions(interval=1, t_max=1.0, delta0=0.3))
        callbacks = [cb]
    config = TrainConfig(
        epochs=epochs, steps_per_epoch=steps, batch_size=128, lr=0.1, momentum=0.9,
        nesterov=True, weight_decay=5e-4, schedule="cosine", warmup_epochs=0.2,
        channels_last="on", threads=threads, quiet=True,
    )  # fmt: skip
    trainer = Trainer(model, data, config, callbacks=callbacks)
    trainer.fit()
    # skip each run's first epoch (allocator and cache warm-up)
    recs = trainer.history[1:]
    step_s = [128 / r["img_per_s"] for r in recs]
    out = {"kind": kind, "step_s": step_s}
    if cb is not None:
        out["update_s"] = [r["chex_update_s"] for r in recs]
        out["alive_flops"] = [r["chex_flops"] for r in recs]
        out["per_step_mask_s"] = _mask_overhead(cb)
    return out


def _mask_overhead(cb: ChexCallback, n: int = 200) -> float:
    """Seconds one training step spends in mask_grads + apply (gradients set to ones)."""
    assert cb.mask is not None
    for p in cb.mask.model.parameters():
        p.grad = torch.ones_like(p)
    t0 = time.perf_counter()
    for _ in range(n):
        cb.mask.mask_grads()
        cb.mask.apply()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    threads = int(os.environ.get("PRUNELAB_THREADS", "2"))
    torch.set_num_threads(threads)
    data = build_data("cifar10_jpg", batch_size=128, seed=0)
    data.test.indices = torch.arange(256)  # evaluation is not what we time
    runs = []
    for rep in range(args.repeats):
        for kind in ("dense", "chex") if rep % 2 == 0 else ("chex", "dense"):
            runs.append(one_run(kind, data, args.epochs, args.steps, threads))
            print(kind, [f"{s * 1000:.0f}" for s in runs[-1]["step_s"]], "ms/step")
    dense = [s for r in runs if r["kind"] == "dense" for s in r["step_s"]]
    chex = [s for r in runs if r["kind"] == "chex" for s in r["step_s"]]
    updates = [u for r in runs if r["kind"] == "chex" for u in r["update_s"]]
    t_dense, t_chex, t_update = (statistics.median(v) for v in (dense, chex, updates))
    epoch_dense = FULL_EPOCH * t_dense
    epoch_chex = FULL_EPOCH * t_chex + t_update
    mask_s = statistics.median(r["per_step_mask_s"] for r in runs if r["kind"] == "chex")
    summary = {
        "threads": threads, "steps_per_run": args.epochs * args.steps, "repeats": args.repeats,
        "dense_step_ms": 1000 * t_dense, "chex_step_ms": 1000 * t_chex,
        "step_ratio": t_chex / t_dense, "update_s": t_update,
        "mask_ms_per_step": 1000 * mask_s,
        "epoch_dense_s": epoch_dense, "epoch_chex_s": epoch_chex,
        "epoch_ratio": epoch_chex / epoch_dense, "runs": runs,
    }  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=1))
    print(
        f"dense {1000 * t_dense:.0f} ms/step, chex {1000 * t_chex:.0f} ms/step "
        f"(mask {1000 * mask_s:.2f} ms), update {t_update:.2f} s; full epoch "
        f"{epoch_chex:.0f} s vs {epoch_dense:.0f} s = {epoch_chex / epoch_dense:.3f}x -> {OUT}"
    )


if __name__ == "__main__":
    main()
