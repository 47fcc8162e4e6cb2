"""The detection tasks: the Trainer's loss equals the hand-computed one, COCO mAP, resume."""

from __future__ import annotations

import copy
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab.errors import ConfigError
from prunelab.methods import PruneTask
from prunelab.methods.finetune import distillation
from prunelab.metrics.detection import coco_mask_map
from prunelab.train import (
    CHECKPOINT_NAME,
    Detection,
    LRSchedule,
    TrainConfig,
    Trainer,
    build_optimizer,
    load_checkpoint,
    param_groups,
    seed_everything,
    task_for,
)
from prunelab.train.detection_tasks import CocoMap, sum_losses
from tests._helpers_detection import tiny_detection_data, tiny_ssd
from tests._helpers_train import state_equal

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def _config(**kw) -> TrainConfig:
    base = {"epochs": 2, "lr": 0.02, "momentum": 0.9, "weight_decay": 4e-5,
            "schedule": "cosine", "warmup_epochs": 0, "seed": 1, "quiet": True,
            "device": "cpu", "eval_every": 100}
    return TrainConfig(**{**base, **kw})


def test_trainer_loss_and_weights_equal_a_hand_written_detection_loop(tmp_path: Path) -> None:
    data = tiny_detection_data(tmp_path)
    assert isinstance(task_for(data), Detection)
    model = tiny_ssd()
    by_hand = copy.deepcopy(model)
    cfg = _config()
    trainer = Trainer(model, data, cfg)
    trainer.fit()

    seed_everything(cfg.seed)
    steps = len(data.train)
    schedule = LRSchedule(cfg, steps, cfg.lr)
    opt = build_optimizer(param_groups(by_hand, cfg.weight_decay, cfg.no_decay_bn_bias), cfg,
                          cfg.lr)
    data.train.generator.manual_seed(data.train.seed)  # the same data order as the Trainer's
    step, losses = 0, []
    for _ in range(cfg.epochs):
        by_hand.train()
        total, seen = 0.0, 0
        for images, targets in itertools.islice(data.train, steps):
            schedule.apply(opt, step)
            loss = sum(by_hand(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += float(loss.detach()) * len(targets)
            seen += len(targets)
        losses.append(total / seen)
    assert [h["train_loss"] for h in trainer.history] == pytest.approx(losses, rel=1e-5)
    assert state_equal(model.state_dict(), by_hand.state_dict())
    record = trainer.history[-1]
    assert {"train_classification", "train_bbox_regression", "test_map", "test_map50"} <= set(
        record)
    assert 0.0 <= record["test_map"] <= record["test_map50"] <= 100.0


def test_coco_map_meter_scores_perfect_and_shifted_detections() -> None:
    gt = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
    meter = CocoMap(masks=False)
    meter.update([{**gt, "scores": torch.tensor([0.9])}], [gt])
    assert meter.compute()["map"] == pytest.approx(100.0)
    masks = torch.zeros(1, 40, 40, dtype=torch.uint8)
    masks[:, 10:20, 10:20] = 1
    shifted = torch.zeros(1, 1, 40, 40)  # Mask R-CNN's (n, 1, H, W) probabilities
    shifted[:, :, 10:20, 12:22] = 0.9  # IoU 80 / 120 = 0.67: passes .50 .55 .60 .65
    box = {"boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0]]), "labels": torch.tensor([2])}
    result = coco_mask_map([{**box, "masks": masks}],
                           [{**box, "scores": torch.tensor([0.8]), "masks": shifted}])
    assert result == {"map": pytest.approx(0.4), "map50": pytest.approx(1.0)}


def test_detection_refuses_distillation_and_sums_the_loss_dict(tmp_path: Path) -> None:
    data = tiny_detection_data(tmp_path)
    task = PruneTask(model=tiny_ssd(), data=data)
    cfg = _config(distill={"teacher": "dense", "weight": 0.5, "temperature": 4.0})
    with pytest.raises(ConfigError, match=r"drop train\.distill"):
        distillation(task, cfg)
    losses = {"a": torch.tensor(1.5), "b": torch.tensor(2.0)}
    assert float(sum_losses(losses, None)) == 3.5
    with pytest.raises(TypeError, match="dict of losses"):
        sum_losses(torch.zeros(2, 3), None)


def _run_helper(data_dir: Path, run_dir: Path, out: Path, *extra: str
                ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tests._helpers_detect_resume", str(data_dir), str(run_dir),
         str(out), *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_killed_detection_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    """SIGKILL after epoch 1's checkpoint, resume in a new process: the same weights."""
    full = _run_helper(tmp_path / "d1", tmp_path / "full", tmp_path / "full.pt")
    assert full.returncode == 0, full.stderr
    killed = _run_helper(tmp_path / "d2", tmp_path / "cut", tmp_path / "cut.pt",
                         "--kill-at-epoch", "1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)["epoch"] == 1
    resumed = _run_helper(tmp_path / "d2", tmp_path / "cut", tmp_path / "cut.pt", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert state_equal(a["model"], b["model"])
    keys = ("epoch", "step", "train_loss", "test_map", "test_map50")
    assert [{k: r.get(k) for k in keys} for r in a["history"]] == [
        {k: r.get(k) for k in keys} for r in b["history"]]
