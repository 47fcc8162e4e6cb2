"""Train the dense ResNet-20 baseline on CIFAR-10 (JPEG) that post-training methods start from.

Recipe (about 60 minutes on 2 CPU cores, the defaults): 40 epochs, batch 128, SGD with
Nesterov momentum 0.9, peak lr 0.2 with 1 warm-up epoch then cosine to zero, weight decay
5e-4, pad-4 crop + flip + an 8x8 cutout. --seed 2 gave 88.14% (the committed checkpoint),
seed 0 87.96%, seed 1 88.05%. Other recipes (30 epochs at lr 0.1 without cutout 87.52%,
cutout 16, label smoothing, no decay on BN/bias, weight averages) are compared in
bench/RESULTS.md §2. Resumable: rerun the same command after an interruption. The final
model is written with `prunelab.save`, by default to
src/prunelab/checkpoints/resnet20_cifar10_jpg.pt (about 1 MB, committed).
`--ema DECAY` / `--swa-start EPOCH` also keep weight averages, logged every epoch and
saved beside the final model as <out>_<name>.pt (e.g. model_ema0.999.pt).

    python bench/train_baseline.py [--epochs 40] [--seed 2] [--run-dir runs/baseline_resnet20]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

import prunelab
from prunelab.data import build_data
from prunelab.train import TrainConfig, Trainer, WeightAveraging

CHECKPOINT = Path("src/prunelab/checkpoints/resnet20_cifar10_jpg.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--run-dir", default="runs/baseline_resnet20")
    parser.add_argument("--out", default=str(CHECKPOINT))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.2, help="peak lr")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--cutout", type=int, default=8, help="erased square side, 0 = off")
    parser.add_argument("--no-decay-bn-bias", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="init, data order and augmentation")
    averaging = parser.add_argument_group("weight averages, logged and saved beside the model")
    # fmt: off
    averaging.add_argument("--ema", type=float, action="append", default=[], metavar="DECAY",
                           help="an EMA of the weights with this decay (repeatable)")
    averaging.add_argument("--swa-start", type=int, action="append", default=[], metavar="EPOCH",
                           help="a uniform average of the weights from this epoch (repeatable)")
    averaging.add_argument("--average-start", type=int, default=0, metavar="EPOCH",
                           help="epoch (0-based) from which the EMAs run")
    # fmt: on
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    averages = [WeightAveraging(decay, start_epoch=args.average_start) for decay in args.ema] + [
        WeightAveraging(None, start_epoch=start) for start in args.swa_start
    ]
    data = build_data("cifar10_jpg", batch_size=args.batch_size, seed=args.seed, cutout=args.cutout)
    model = prunelab.create(args.model, num_classes=data.num_classes)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
        nesterov=True, weight_decay=5e-4, schedule="cosine", warmup_epochs=1, seed=args.seed,
        label_smoothing=args.label_smoothing, no_decay_bn_bias=args.no_decay_bn_bias,
        channels_last="on", threads=args.threads, run_dir=args.run_dir,
        resume=(Path(args.run_dir) / "checkpoint.pt").exists(),
    )  # fmt: skip
    trainer = Trainer(model, data, config, callbacks=averages)
    final = trainer.fit()
    meta = {"data": "cifar10_jpg", "cutout": args.cutout, "recipe": config.to_dict()}
    save_model(trainer.model, args.out, {**meta, "top1": final.get("top1")})
    print(f"top-1 {final.get('top1')}, saved {args.out}")
    for average in averages:
        # each average is written beside the final weights: model_ema0.999.pt, ...
        out = Path(args.out).with_name(f"{Path(args.out).stem}_{average.name}.pt")
        average.apply_to(trainer.model)
        top1 = average.final_top1(trainer)  # evaluated by the callback after the last epoch
        save_model(trainer.model, out, {**meta, "top1": top1, "average": average.name})
        print(f"{average.name}: top-1 {top1}, saved {out}")


def save_model(model: torch.nn.Module, out: str | Path, meta: dict) -> None:
    """Save a CPU, NCHW copy (the trainer keeps its model in channels_last on its device)."""
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format).cpu().eval()
    prunelab.save(nchw, out, meta=meta)


if __name__ == "__main__":
    main()
