"""GoogLeNet through the command line: train, prune (with fine-tuning), evaluate.

In training GoogLeNet returns `GoogLeNetOutputs` (main and two auxiliary
logits): the loop adds the aux losses, the memory-layout timing runs the same
loss, and pruning cuts the aux heads with the channels they read, so the pruned
model trains. Inception-v3 shares the code path (`InceptionOutputs`) but needs
about 299x299 inputs for its aux head, too slow for a test here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.models.googlenet import GoogLeNetOutputs

from prunelab import io
from prunelab.cli import main

SMALL = [
    "data.name=synthetic", "data.n_train=16", "data.n_test=8", "data.batch_size=8",
    "data.holdout=0", "data.image_size=32", "train.epochs=1", "train.steps_per_epoch=1",
    "train.threads=1", "latency.repeats=1", "latency.threads=1",
]  # fmt: skip

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def test_googlenet_trains_prunes_fine_tunes_and_evaluates(tmp_path: Path, capsys) -> None:
    train_dir, prune_dir = tmp_path / "train", tmp_path / "prune"
    assert main(["train", "model=googlenet", *SMALL, "--quiet", "--run-dir", str(train_dir)]) == 0
    args = ["prune", "model=googlenet", f"checkpoint={train_dir / 'model.pt'}", "target=0.5",
            "method=uniform", "train.channels_last=best", *SMALL, "--run-dir", str(prune_dir)]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "memory layout" in printed.err  # timed on a training step, then fine-tuned
    assert "| pruned |" in printed.out
    dense, pruned = json.loads((prune_dir / "summary.json").read_text())["rows"]
    assert abs(pruned["flops"] / dense["flops"] - 0.5) < 0.03 and pruned["top1"] is not None

    model = io.load(prune_dir / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == pruned["params"]
    assert model.aux1.conv.conv.in_channels < 512  # the aux head lost what inception4a lost
    outputs = model.train()(torch.randn(2, 3, 32, 32))
    assert isinstance(outputs, GoogLeNetOutputs)
    assert all(o.shape == (2, 10) for o in outputs)

    assert main(["eval", str(prune_dir / "model.pt"), *SMALL[:6]]) == 0
    assert "top-1" in capsys.readouterr().out
