"""Task contract: the Trainer computes what a hand-written loop computes, for every task."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.train import (
    Callback,
    LRSchedule,
    PointCloudClassification,
    Task,
    TrainConfig,
    Trainer,
    build_optimizer,
    evaluate_model,
    param_groups,
    seed_everything,
    task_for,
)
from prunelab.train.tasks import ClassAccuracy
from tests._helpers_train import state_equal, tiny_cnn, tiny_data

pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_written_classification(model: nn.Module, data: Any, cfg: TrainConfig
                                 ) -> tuple[list[float], list[float]]:
    """The loop as it was before tasks existed: (image, label), cross-entropy, top-1."""
    seed_everything(cfg.seed)
    steps = len(data.train)
    schedule = LRSchedule(cfg, steps, cfg.lr)
    opt = build_optimizer(param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias), cfg,
                          cfg.lr)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    step, losses, top1 = 0, [], []
    for _ in range(cfg.epochs):
        model.train()
        loss_sum = torch.zeros(())
        correct, seen = 0, 0
        for x, y in itertools.islice(data.train, steps):
            schedule.apply(opt, step)
            out = model(x)
            loss = criterion(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.detach().float() * y.shape[0]
            correct += int((out.argmax(dim=1) == y).sum())
            seen += y.shape[0]
        losses.append(loss_sum.item() / seen)
        model.eval()
        with torch.no_grad():
            hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.test)
        top1.append(100.0 * hits / data.test.num_samples)
    return losses, top1


def test_classification_trainer_is_bit_identical_to_the_hand_written_loop():
    cfg = TrainConfig(epochs=2, lr=0.1, seed=3, quiet=True, label_smoothing=0.1,
                      warmup_epochs=1, weight_decay=5e-4)
    torch.manual_seed(0)
    model = tiny_cnn()
    by_hand = copy.deepcopy(model)
    trainer = Trainer(model, tiny_data(), cfg)
    assert isinstance(trainer.task, Task) and trainer.task.name == "classification"
    trainer.fit()
    losses, top1 = _hand_written_classification(by_hand, tiny_data(), cfg)
    assert state_equal(model.state_dict(), by_hand.state_dict())
    assert [r["train_loss"] for r in trainer.history] == pytest.approx(losses, rel=1e-6)
    assert [r["test_top1"] for r in trainer.history] == top1


class _LossByHand(Callback):
    """Recomputes the first step's loss from the batch the Trainer hands to callbacks."""

    def __init__(self, loss_fn: Any) -> None:
        self.loss_fn = loss_fn
        self.pairs: list[tuple[float, float]] = []

    def on_step_start(self, trainer: Trainer, batch: tuple[Any, Any]) -> None:
        model = copy.deepcopy(trainer.model)  # same weights, same train-mode BN
        with torch.no_grad():
            self._expected = float(self.loss_fn(model(batch[0]), batch[1]))

    def on_step_end(self, trainer: Trainer) -> None:
        self.pairs.append((float(trainer.loss), self._expected))


def test_fixed_batch_gives_the_hand_computed_loss_classification():
    cb = _LossByHand(lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1))
    cfg = TrainConfig(epochs=1, steps_per_epoch=3, quiet=True, label_smoothing=0.1)
    Trainer(tiny_cnn(), tiny_data(), cfg, [cb]).fit()
    assert len(cb.pairs) == 3
    for got, want in cb.pairs:
        assert got == pytest.approx(want, rel=1e-6)


def test_task_comes_from_the_data_and_unknown_tasks_are_refused():
    data = tiny_data()
    assert task_for(data).name == "classification"
    data.task = "pointcloud_classification"
    task = task_for(data)
    assert isinstance(task, PointCloudClassification) and task.num_classes == 4
    data.task = "segmentation_of_dreams"
    with pytest.raises(Exception, match="segmentation_of_dreams"):
        task_for(data)


def test_class_accuracy_meter_overall_and_mean_class():
    meter = ClassAccuracy(torch.device("cpu"), num_classes=3)
    # class 0: 3 of 4 right, class 1: 1 of 1, class 2: 0 of 1 -> OA 4/6, mean class (.75+1+0)/3
    logits = torch.eye(3)[[0, 0, 0, 1, 1, 0]] * 5
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    meter.update(logits[:3], labels[:3])
    meter.update(logits[3:], labels[3:])
    m = meter.compute()
    assert m["overall_acc"] == pytest.approx(100 * 4 / 6)
    assert m["mean_class_acc"] == pytest.approx(100 * (0.75 + 1 + 0) / 3)
    assert m["samples"] == 6
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, labels).item())


def test_evaluate_model_matches_trainer_evaluate():
    model = tiny_cnn()
    data = tiny_data()
    trainer = Trainer(model, data, TrainConfig(epochs=1, quiet=True))
    a = trainer.evaluate(log=False)
    b = evaluate_model(model, data.test, trainer.task)
    assert a == b
