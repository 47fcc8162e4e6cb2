"""The Torch-Pruning reference arm: same FLOPs, saves and loads like ours, clear error if absent."""

from __future__ import annotations

import builtins

import pytest
import torch

from prunelab import count, io, models
from prunelab.data import build_data
from prunelab.errors import ConfigError
from prunelab.methods import PruneTask, get_method
from prunelab.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _task() -> PruneTask:
    data = build_data("synthetic", n_train=64, n_test=32, batch_size=32)
    model = models.create("resnet20", num_classes=10)
    return PruneTask(model=model, data=data, train=TrainConfig(epochs=0), target=0.5)


def test_reaches_the_flops_target_and_round_trips(tmp_path) -> None:
    pytest.importorskip("torch_pruning")
    task = _task()
    pruned, ratio = get_method("torch_pruning")().prune_to_target(task)
    x = torch.zeros(1, 3, 32, 32)
    assert abs(count(pruned, x).flops / count(task.model, x).flops - 0.5) <= 0.01
    assert 0.2 < ratio < 0.35  # one ratio per layer: about 1 - sqrt(0.5)
    io.save(pruned, tmp_path / "tp.pt")
    again = io.load(tmp_path / "tp.pt").eval()
    batch = torch.randn(2, 3, 32, 32)
    assert torch.equal(pruned.eval()(batch), again(batch))


def test_missing_extra_is_one_clear_line(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_torch_pruning(name, *args, **kwargs):
        if name == "torch_pruning":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch_pruning)
    with pytest.raises(ConfigError, match=r"pip install 'prunelab\[bench\]'"):
        get_method("torch_pruning")().prune_to_target(_task())
