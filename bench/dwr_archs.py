"""DWR on a CIFAR-sized model of the zoo (`--arch`), CIFAR-10 JPEG, short schedule.

Three arms per architecture, one per call, each resumable (checkpoints under
runs/<folder>/<arm>; the folder is dwr_effnet for efficientnet_b0, dwr_<arch> otherwise):

    dense    `--arch` (default torchvision efficientnet_b0, weights=None, 10 classes) from scratch:
             `--dense-epochs` "epochs" of `--steps` steps, batch 64, SGD 0.9 lr 0.02
             (1 warm-up epoch, then cosine per step), weight decay 5e-4; saved to
             runs/<folder>/dense.pt (EfficientNet-B0 at lr 0.05 without warm-up: the loss
             diverged to 8.6)
    dwr      `dwr` in all three dimensions from the dense model at 50% FLOPs (MACs):
             `--rounds` collection rounds per dimension of one epoch each, then the
             final fine-tune of `--final-epochs` epochs; `--origin checkpoint` takes the
             dense model as the origin point (the paper) instead of one more round at full size
    uniform  uniform-l1 pruning of the dense model to the same budget, the same final
             fine-tune (the yardstick)

Top-1 on `--test` test images drawn at random (seed 0, as bench/arch_e2e.py); DWR's points
and DBP probes use `--holdout` (1024) held-out training images, left out of every training
run. Records: bench/results/<folder>/<arm>.json.

    PRUNELAB_DATA=/work/shared/data nice -n 10 python bench/dwr_archs.py dense
    PRUNELAB_DATA=/work/shared/data nice -n 10 python bench/dwr_archs.py dwr
    PRUNELAB_DATA=/work/shared/data nice -n 10 python bench/dwr_archs.py uniform
    PRUNELAB_DATA=/work/shared/data nice -n 10 python bench/dwr_archs.py dense --arch resnet56
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import prunelab
from arch_e2e import test_subset
from prunelab.atomic import atomic_write_text
from prunelab.data import DataBundle, build_data
from prunelab.methods import PruneTask, get_method
from prunelab.methods.finetune import accuracy, fit
from prunelab.train import TrainConfig

TARGET = 0.5


def folder(arch: str) -> str:
    """Where an architecture's records and checkpoints go (the first run's name kept)."""
    return "dwr_effnet" if arch == "efficientnet_b0" else f"dwr_{arch}"


def data(args: argparse.Namespace) -> DataBundle:
    d = build_data("cifar10_jpg", batch_size=64, holdout=args.holdout, seed=0)
    d.test.indices = test_subset(d.test.images.shape[0], args.test)
    return d


def recipe(args: argparse.Namespace, arm: str, epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs, steps_per_epoch=args.steps, batch_size=64, lr=0.02, momentum=0.9,
        weight_decay=5e-4, schedule="cosine", warmup_epochs=1 if arm == "dense" else 0,
        seed=0, threads=1,
        quiet=False, progress_seconds=120.0, eval_every=max(1, epochs),
        run_dir=str(args.runs / arm), resume=True,
    )  # fmt: skip


def dense_model(args: argparse.Namespace, d: DataBundle) -> tuple[torch.nn.Module, dict]:
    path = args.runs / "dense.pt"
    if path.exists():
        return prunelab.load(path), json.loads((args.results / "dense.json").read_text())
    torch.manual_seed(0)
    model = prunelab.create(args.arch, num_classes=10)
    task = PruneTask(model, d, train=recipe(args, "dense", args.dense_epochs), run_dir=args.runs)
    t0 = time.perf_counter()
    model, history, _ = fit(task, model, "dense")
    model.eval()
    prunelab.save(model, path)
    record = {"arm": "dense", "arch": args.arch, "top1": accuracy(model, d.test),
              "flops": 1.0, "params": 1.0,
              "steps": args.dense_epochs * args.steps, "seconds": time.perf_counter() - t0,
              "history": history}  # fmt: skip
    atomic_write_text(args.results / "dense.json", json.dumps(record, indent=1))
    return model, record


def run(args: argparse.Namespace, arm: str) -> dict[str, Any]:
    d = data(args)
    model, dense = dense_model(args, d)
    if arm == "dense":
        return dense
    dense_top1 = accuracy(model, d.test)  # on this call's test images
    x = torch.zeros(1, 3, 32, 32)
    base = prunelab.count(model, x)
    task = PruneTask(model, d, target=TARGET, train=recipe(args, arm, args.final_epochs),
                     run_dir=args.runs / arm)  # fmt: skip
    options: dict[str, Any] = (
        {"rounds": args.rounds, "round_epochs": 1, "final_epochs": args.final_epochs,
         "probe_batches": 8, "tolerance": 0.02, "origin": args.origin}
        if arm == "dwr" else {"criterion": "l1", "round_to": 1}
    )  # fmt: skip
    t0 = time.perf_counter()
    result = get_method(arm if arm == "dwr" else "uniform")(**options).run(task)
    pruned = result.model.eval()
    # DWR's chosen side; not prunelab_input_size, which torchvision models set to 224
    pixels = getattr(pruned, "prunelab_resolution", None) or 32
    size = (3, pixels, pixels)
    small = prunelab.count(pruned, torch.zeros(1, *size))
    with_res = d.resolution
    d.set_resolution(size[1])
    top1 = accuracy(pruned, d.test)
    d.set_resolution(with_res)
    info = result.info
    keep = ("dims", "removable_blocks", "points", "optimum", "chosen", "removed_blocks",
            "width_keep", "achieved_flops", "within_tolerance", "masked_vs_pruned_max_diff",
            "collection", "accuracy_model", "plan_ratios", "achieved")  # fmt: skip
    return {
        "arm": arm, "arch": args.arch, "top1": top1, "dense_top1": dense_top1,
        "test_images": args.test,
        "flops": small.flops / base.flops, "params": small.params / base.params,
        "input_size": list(size), "options": options,
        "final_steps": args.final_epochs * args.steps,
        "seconds": time.perf_counter() - t0, "info": {k: info[k] for k in keep if k in info},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("arm", choices=("dense", "dwr", "uniform"))
    ap.add_argument("--dense-epochs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch, every arm")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--final-epochs", type=int, default=5)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--holdout", type=int, default=1024, help="held-out training images")
    ap.add_argument("--arch", default="efficientnet_b0", help="a zoo model (prunelab models)")
    ap.add_argument("--origin", choices=("retrained", "checkpoint"), default="retrained",
                    help="DWR's origin point: one more round at full size, or the dense model")
    args = ap.parse_args()
    args.results = Path("bench/results") / folder(args.arch)
    args.runs = Path("runs") / folder(args.arch)
    torch.set_num_threads(1)
    args.results.mkdir(parents=True, exist_ok=True)
    record = run(args, args.arm)
    atomic_write_text(args.results / f"{args.arm}.json", json.dumps(record, indent=1))
    print(json.dumps({k: record.get(k) for k in ("arm", "top1", "flops", "params")}))


if __name__ == "__main__":
    main()
