"""Training-loop overhead: prunelab's Trainer against a minimal hand-written loop.

Both train the same model from the same loader (same batches, same
augmentation), with the same SGD settings and memory layout, in alternating
chunks of steps within one process, so machine noise hits both alike.
Throughput in images (or point clouds) per second over the training steps
only (the Trainer's evaluation pass is excluded: it reports `img_per_s` of
the train part). Target: Trainer >= 0.9x the minimal loop. `--task`:

    classification  ResNet-20 on CIFAR-10 (JPEG), NCHW and channels_last
    detection       SSD-lite (MobileNetV3) on COCO128 at 128x128, batch 8: the minimal
                    loop is `sum(model(images, targets).values()).backward()`
    pointcloud      PointNet++ SSG (the ModelNet10 config's width 0.5) on ModelNet10, batch 32

    PRUNELAB_SLOT_ALL=1 bench/slot .venv/bin/python bench/loop_overhead.py
Writes bench/results/loop_overhead.json (loop_overhead_<task>.json for the others).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import prunelab
from prunelab.data import build_data
from prunelab.train import TrainConfig, Trainer

# task -> (data name, data options, model name, model options)
SETUPS = {
    "classification": ("cifar10_jpg", {"batch_size": 128}, "resnet20", {}),
    "detection": ("coco128", {"batch_size": 8, "image_size": 128, "holdout": 0},
                  "ssdlite320_mobilenet_v3_large", {"num_classes": 81, "image_size": 128}),
    "pointcloud": ("modelnet10", {"batch_size": 32}, "pointnet2_ssg",
                   {"num_classes": 10, "width": 0.5, "npoints": [128, 32],
                    "nsamples": [16, 32]}),
}


def minimal_loss(model, x, y, task: str) -> torch.Tensor:
    if task == "detection":  # torchvision detectors return their loss dict in training
        return sum(model(x, y).values())
    return F.cross_entropy(model(x), y)


def minimal_loop(model, loader, steps: int, channels_last: bool,
                 task: str = "classification") -> float:
    """Images per second of the plainest correct PyTorch training loop."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    seen = 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = minimal_loss(model, x, y, task)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def trainer_loop(model, data, steps: int, channels_last: bool) -> float:
    config = TrainConfig(
        epochs=1, steps_per_epoch=steps, lr=0.05, momentum=0.9, weight_decay=5e-4,
        schedule="constant", channels_last="on" if channels_last else "off", quiet=True,
    )  # fmt: skip
    trainer = Trainer(model, data, config)
    trainer.fit()
    return trainer.history[-1]["img_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--task", choices=sorted(SETUPS), default="classification")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("PRUNELAB_THREADS", "2")))
    data_name, data_opts, model_name, model_opts = SETUPS[args.task]
    data = build_data(data_name, seed=0, **data_opts)
    layouts = ("nchw", "channels_last") if args.task == "classification" else ("nchw",)
    results = {"task": args.task, "model": model_name, "data": data_name}
    for layout in layouts:
        cl = layout == "channels_last"
        torch.manual_seed(0)
        minimal_model = prunelab.create(model_name, **model_opts)
        trainer_model = prunelab.create(model_name, **model_opts)
        if cl:
            minimal_model = minimal_model.to(memory_format=torch.channels_last)
        mins, ours = [], []
        for _ in range(args.rounds):  # alternate so drift in machine load hits both
            mins.append(minimal_loop(minimal_model, data.train, args.steps, cl, args.task))
            ours.append(trainer_loop(trainer_model, data, args.steps, cl))
        m, o = statistics.median(mins), statistics.median(ours)
        results[layout] = {"minimal_img_s": m, "trainer_img_s": o, "ratio": o / m,
                           "rounds": args.rounds, "steps": args.steps}  # fmt: skip
        print(f"{layout}: minimal {m:.0f} img/s, Trainer {o:.0f} img/s, ratio {o / m:.3f}")
    results["threads"] = torch.get_num_threads()
    suffix = "" if args.task == "classification" else f"_{args.task}"
    out = Path(args.out or f"bench/results/loop_overhead{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
