"""prunelab.train: schedules, parameter groups, callbacks, checkpoints, exact resume."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prunelab.errors import ConfigError, CorruptFileError
from prunelab.train import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    Callback,
    LRSchedule,
    TrainConfig,
    Trainer,
    load_checkpoint,
    param_groups,
    read_metrics,
    resolve_amp,
    resolve_device,
    save_checkpoint,
)
from tests._helpers_train import state_equal, tiny_cnn, tiny_data

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def quiet_config(**kw) -> TrainConfig:
    base = {"epochs": 2, "lr": 0.05, "quiet": True, "weight_decay": 0.0}
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------ schedules


def test_warmup_then_cosine_values():
    cfg = TrainConfig(epochs=10, lr=0.4, schedule="cosine", warmup_epochs=2, min_lr=0.04)
    s = LRSchedule(cfg, steps_per_epoch=10, base_lr=0.4)  # 100 steps, 20 warm-up
    assert s.lr(0) == pytest.approx(0.4 / 20)
    assert s.lr(9) == pytest.approx(0.4 * 10 / 20)
    assert s.lr(19) == pytest.approx(0.4)  # warm-up ends at the peak
    assert s.lr(20) == pytest.approx(0.4)  # cosine starts at the peak
    assert s.lr(60) == pytest.approx(0.04 + 0.36 * 0.5)  # half-way: midpoint
    assert s.lr(40) == pytest.approx(0.04 + 0.36 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s.lr(100) == pytest.approx(0.04)
    lrs = [s.lr(i) for i in range(20, 100)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))  # monotone decay


def test_step_schedule_decays_at_milestones():
    cfg = TrainConfig(epochs=160, lr=0.1, schedule="step", milestones=(80, 120), gamma=0.1)
    s = LRSchedule(cfg, steps_per_epoch=391, base_lr=0.1)
    assert s.lr(80 * 391 - 1) == pytest.approx(0.1)
    assert s.lr(80 * 391) == pytest.approx(0.01)
    assert s.lr(120 * 391 - 1) == pytest.approx(0.01)
    assert s.lr(120 * 391) == pytest.approx(0.001)
    assert LRSchedule(TrainConfig(schedule="constant", lr=0.3), 5, 0.3).lr(1000) == 0.3
    # fractional milestones are allowed (quick presets)
    s2 = LRSchedule(TrainConfig(epochs=2, schedule="step", milestones=(0.5,)), 10, 0.1)
    assert s2.lr(4) == pytest.approx(0.1) and s2.lr(5) == pytest.approx(0.01)


def test_schedule_is_applied_per_step_and_groups_keep_their_own_base():
    model = tiny_cnn()
    data = tiny_data()
    seen: list[list[float]] = []

    class Watch(Callback):
        def on_step_end(self, trainer):
            seen.append([g["lr"] for g in trainer.optimizer.param_groups])

    cfg = quiet_config(epochs=2, lr=0.1, schedule="cosine", warmup_epochs=1,
                       no_decay_bn_bias=True, weight_decay=1e-4)
    tr = Trainer(model, data, cfg, callbacks=[Watch()])
    tr.fit()
    spe = tr.steps_per_epoch
    assert len(seen) == 2 * spe
    for step, lrs in enumerate(seen):
        assert lrs == pytest.approx([tr.scheduler.lr(step)] * len(lrs))


def test_no_decay_groups_for_bn_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = param_groups(model, 1e-4, no_decay_bn_bias=True)
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    decay_expected = {id(model[0].weight), id(model[3].weight)}
    assert by_name["decay"] == decay_expected
    assert by_name["no_decay"] == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                   id(model[3].bias)}
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    all_decay = param_groups(model, 1e-4, no_decay_bn_bias=False)
    assert len(all_decay) == 1 and len(all_decay[0]["params"]) == 6
    model[1].weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in param_groups(model, 0.0, True)) == 5


def test_config_validation_presets_and_lr_scaling():
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="poly")
    with pytest.raises(ConfigError, match="milestones"):
        TrainConfig(milestones=(120, 80))
    with pytest.raises(ConfigError, match="resume"):
        TrainConfig(resume=True)
    with pytest.raises(ConfigError, match="lrr"):
        TrainConfig.from_dict({"lrr": 0.1})
    chex = TrainConfig.preset("imagenet_chex")
    assert (chex.momentum, chex.warmup_epochs, chex.label_smoothing) == (0.875, 8, 0.1)
    assert chex.weight_decay == 3.05e-5 and chex.no_decay_bn_bias and chex.min_lr == 0
    cifar = TrainConfig.preset("cifar_step")
    assert cifar.milestones == (80.0, 120.0) and cifar.epochs == 160 and cifar.lr == 0.1
    assert TrainConfig(channels_last=True).channels_last == "on"
    # lr given per 256 images scales with the global batch: 0.256 x 64/256
    tr = Trainer(tiny_cnn(), tiny_data(batch_size=64),
                 quiet_config(lr=0.256, lr_ref_batch=256, epochs=1))
    assert tr.base_lr == pytest.approx(0.064)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.064)
    with pytest.raises(ConfigError, match="amp"):
        Trainer(tiny_cnn(), tiny_data(), quiet_config(amp="fp16", device="cpu"))
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


# ------------------------------------------------------------------ learning


def test_tiny_model_learns_synthetic_data():
    torch.manual_seed(0)
    data = tiny_data(batch_size=32, n_train=512, n_test=256)
    tr = Trainer(tiny_cnn(), data, quiet_config(epochs=3, lr=0.1, weight_decay=5e-4))
    before = tr.evaluate(log=False)
    final = tr.fit()
    assert final["top1"] > 60.0 > before["top1"] + 10  # chance is 25%
    assert final["top5"] == 100.0  # 4 classes: top-5 is everything
    assert final["steps"] == 3 * (480 // 32 + 1) == tr.global_step
    assert len(tr.history) == 3 and tr.history[-1]["train_top1"] > 50


def test_steps_per_epoch_limit_and_eval_every():
    tr = Trainer(tiny_cnn(), tiny_data(), quiet_config(epochs=3, steps_per_epoch=2,
                                                       eval_every=2))
    tr.fit()
    assert tr.global_step == 6 and tr.steps_per_epoch == 2
    assert ["test_top1" in r for r in tr.history] == [False, True, True]


# ------------------------------------------------------------------ callbacks


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_train_start(self, trainer):
        self.events.append("train_start")

    def on_epoch_start(self, trainer, epoch):
        self.events.append(f"epoch_start{epoch}")

    def on_step_start(self, trainer, batch):
        assert batch[0].shape[0] == batch[1].shape[0]
        self.events.append("step_start")

    def extra_loss(self, trainer, outputs, targets):
        self.events.append("extra_loss")
        return None

    def after_backward(self, trainer):
        assert any(p.grad is not None for p in trainer.model.parameters())
        self.events.append("after_backward")

    def on_step_end(self, trainer):
        self.events.append("step_end")

    def on_evaluate(self, trainer, metrics):
        self.events.append("evaluate")

    def on_epoch_end(self, trainer, epoch, metrics):
        trainer.log(recorder_epoch=epoch)
        self.events.append(f"epoch_end{epoch}")

    def on_train_end(self, trainer):
        self.events.append("train_end")


def test_hooks_fire_in_order(tmp_path: Path):
    rec = Recorder()
    Trainer(tiny_cnn(), tiny_data(), quiet_config(epochs=2, steps_per_epoch=2,
                                                  run_dir=str(tmp_path)), [rec]).fit()
    step = ["step_start", "extra_loss", "after_backward", "step_end"]
    expected = ["train_start"]
    for e in range(2):
        expected += [f"epoch_start{e}", *step, *step, "evaluate", f"epoch_end{e}"]
    assert rec.events == [*expected, "train_end"]
    records = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    assert [r["kind"] for r in records] == ["start", "epoch", "epoch", "end"]
    assert [r["recorder_epoch"] for r in records[1:3]] == [0, 1]
    assert {"train_loss", "train_top1", "test_top1", "lr", "img_per_s", "step"} <= set(records[1])
    assert records[0]["data"]["name"] == "synthetic" and records[0]["data"]["cutout"] == 0
    # the reader skips a line cut short by a kill and filters by kind
    with open(tmp_path / METRICS_NAME, "a") as f:
        f.write('{"kind": "epo')
    assert [r["epoch"] for r in read_metrics(tmp_path / METRICS_NAME, kind="epoch")] == [1, 2]
    assert len(read_metrics(tmp_path / METRICS_NAME)) == 4


def test_extra_loss_is_added_to_the_optimised_loss():
    model = tiny_cnn()
    model.register_parameter("probe", nn.Parameter(torch.zeros(3)))  # unused by forward

    class Penalty(Callback):
        def extra_loss(self, trainer, outputs, targets):
            return 2.0 * trainer.model.probe.sum()

    cfg = quiet_config(epochs=1, steps_per_epoch=3, lr=0.1, momentum=0.0, schedule="constant")
    tr = Trainer(model, tiny_data(), cfg, [Penalty()])
    tr.fit()
    # d(extra)/d(probe) = 2 per step, nothing else touches it
    assert torch.allclose(model.probe, torch.full((3,), -0.1 * 2.0 * 3))
    assert "train_extra_loss" in tr.history[0]


def test_after_backward_can_freeze_a_parameter():
    model = tiny_cnn()
    first = model[0].weight
    before = first.detach().clone()
    other = model[-1].weight.detach().clone()

    class Freeze(Callback):
        def after_backward(self, trainer):
            first.grad.zero_()

    cfg = quiet_config(epochs=1, momentum=0.0, weight_decay=0.0)
    Trainer(model, tiny_data(), cfg, [Freeze()]).fit()
    assert torch.equal(first.detach(), before)
    assert not torch.equal(model[-1].weight.detach(), other)


class Counter(Callback):
    """Stateful callback: counts steps; state must survive a checkpoint."""

    def __init__(self) -> None:
        self.steps = 0
        self.trace = torch.zeros(2)

    def on_step_end(self, trainer):
        self.steps += 1
        self.trace += 1

    def state_dict(self):
        return {"steps": self.steps, "trace": self.trace.clone(), "names": ["a", "b"]}

    def load_state_dict(self, state):
        self.steps = state["steps"]
        self.trace = state["trace"].clone()


def test_callback_state_round_trips_through_checkpoint(tmp_path: Path):
    cb = Counter()
    cfg = quiet_config(epochs=2, steps_per_epoch=3, run_dir=str(tmp_path))
    Trainer(tiny_cnn(), tiny_data(), cfg, [cb]).fit()
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)  # safe loader, no trust needed
    assert state["epoch"] == 2 and state["global_step"] == 6 and len(state["history"]) == 2
    assert state["callbacks"][0]["steps"] == 6

    fresh = Counter()
    model = tiny_cnn()
    tr = Trainer(model, tiny_data(), cfg.replace(resume=True), [fresh])
    final = tr.fit()  # already complete: restores and returns without training
    assert fresh.steps == 6 and torch.equal(fresh.trace, torch.full((2,), 6.0))
    assert tr.global_step == 6 and final["epochs"] == 2
    assert state_equal(model.state_dict(), state["model"])
    # continuing for more epochs picks up the counter where it was
    more = Counter()
    Trainer(tiny_cnn(), tiny_data(), cfg.replace(resume=True, epochs=3), [more]).fit()
    assert more.steps == 9


def test_rebuild_optimizer_keeps_schedule_position_and_momentum():
    model = tiny_cnn()

    class Widen(Callback):
        def on_epoch_start(self, trainer, epoch):
            if epoch == 1:
                old_fc = trainer.model[-1]
                trainer.model[-1] = nn.Linear(old_fc.in_features, 4)
                kept = trainer.model[0].weight
                assert kept in trainer.optimizer.state
                trainer.rebuild_optimizer()
                assert trainer.optimizer.state[kept]["momentum_buffer"] is not None
                assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
                    trainer.scheduler.lr(trainer.global_step))
                assert trainer.model[-1].weight in {p for g in trainer.optimizer.param_groups
                                                    for p in g["params"]}

    new_fc = []

    class Check(Callback):
        def on_train_end(self, trainer):
            new_fc.append(trainer.model[-1].weight.detach().clone())

    cfg = quiet_config(epochs=2, steps_per_epoch=3, warmup_epochs=1)
    tr = Trainer(model, tiny_data(), cfg, [Widen(), Check()])
    tr.fit()
    assert tr.global_step == 6


def test_progress_to_stderr_unless_quiet(capsys: pytest.CaptureFixture[str]):
    Trainer(tiny_cnn(), tiny_data(), quiet_config(epochs=1, steps_per_epoch=2)).fit()
    assert capsys.readouterr().err == ""
    Trainer(tiny_cnn(), tiny_data(), quiet_config(epochs=2, steps_per_epoch=2,
                                                  quiet=False)).fit()
    err = capsys.readouterr().err
    assert re.search(r"epoch 2/2 +step 4 +loss [\d.]+ +top1 [\d.]+% +\| test top1", err), err
    assert "img/s" in err and "ETA" in err


def test_evaluate_outside_fit_writes_an_eval_record(tmp_path: Path):
    data = tiny_data(holdout=32)
    tr = Trainer(tiny_cnn(), data, quiet_config(epochs=1, run_dir=str(tmp_path)))
    tr.fit()
    m = tr.evaluate(data.holdout)
    assert m["samples"] == 32 and 0 <= m["top1"] <= 100 and m["loss"] > 0
    kinds = [json.loads(x)["kind"] for x in (tmp_path / METRICS_NAME).read_text().splitlines()]
    assert kinds[-1] == "eval"


# ----------------------------------------------------------------- checkpoints


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path):
    cfg = quiet_config(epochs=1, steps_per_epoch=2, run_dir=str(tmp_path))
    Trainer(tiny_cnn(), tiny_data(), cfg).fit()
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=re.escape(str(path))):
        load_checkpoint(path)
    with pytest.raises(CorruptFileError, match="truncated or damaged"):
        Trainer(tiny_cnn(), tiny_data(), cfg.replace(resume=True)).fit()
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptFileError, match=re.escape(str(path))):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CorruptFileError, match="not a prunelab training checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_with_foreign_objects_needs_trust(tmp_path: Path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"odd": Path("x")})
    with pytest.raises(CorruptFileError, match="safe loader"):
        load_checkpoint(path)
    assert load_checkpoint(path, trusted=True)["odd"] == Path("x")


def test_checkpoint_of_other_model_is_refused(tmp_path: Path):
    cfg = quiet_config(epochs=1, steps_per_epoch=1, run_dir=str(tmp_path))
    Trainer(tiny_cnn(), tiny_data(), cfg).fit()
    with pytest.raises(ConfigError, match="does not fit this model"):
        Trainer(tiny_cnn(width=4), tiny_data(), cfg.replace(resume=True)).fit()
    with pytest.raises(ConfigError, match="callbacks"):
        Trainer(tiny_cnn(), tiny_data(), cfg.replace(resume=True), [Counter()]).fit()


def _run_helper(run_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PRUNELAB_DATA", None)
    return subprocess.run(
        [sys.executable, "-m", "tests._helpers_train_resume", str(run_dir), str(out), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_killed_run_resumes_exactly(tmp_path: Path):
    """SIGKILL after epoch 2's checkpoint, resume in a fresh process: bit-identical weights."""
    full = _run_helper(tmp_path / "full", tmp_path / "full.pt")
    assert full.returncode == 0, full.stderr

    killed = _run_helper(tmp_path / "cut", tmp_path / "cut.pt", "--kill-at-epoch", "2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "cut.pt").exists()
    ckpt = load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)
    assert ckpt["epoch"] == 2

    resumed = _run_helper(tmp_path / "cut", tmp_path / "cut.pt", "--resume")
    assert resumed.returncode == 0, resumed.stderr

    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert state_equal(a["model"], b["model"])
    assert a["counter"] == b["counter"] == 4 * a["steps_per_epoch"]

    def strip(history):
        return [{k: v for k, v in r.items() if k not in ("time", "img_per_s")} for r in history]

    assert strip(a["history"]) == strip(b["history"])
    log = [json.loads(x) for x in (tmp_path / "cut" / METRICS_NAME).read_text().splitlines()]
    assert [r["kind"] for r in log] == ["start", "epoch", "epoch", "start", "epoch", "epoch",
                                        "end"]
    assert log[3]["resumed"] is True


def test_resume_drops_log_records_written_after_the_checkpoint(tmp_path: Path):
    cfg = quiet_config(epochs=2, steps_per_epoch=2, run_dir=str(tmp_path))
    Trainer(tiny_cnn(), tiny_data(), cfg).fit()
    log = tmp_path / METRICS_NAME
    # as if killed after logging epoch 3 but before its checkpoint, mid-way through a line
    with open(log, "a") as f:
        f.write(json.dumps({"kind": "epoch", "epoch": 3, "train_loss": 9.9}) + "\n")
        f.write('{"kind": "epo')
    Trainer(tiny_cnn(), tiny_data(), cfg.replace(resume=True, epochs=3)).fit()
    records = [json.loads(x) for x in log.read_text().splitlines()]
    epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3]
    assert all(r.get("train_loss") != 9.9 for r in records)


def test_best_memory_layout_is_timed_and_used() -> None:
    from prunelab.data import build_data

    data = build_data("synthetic", batch_size=16, n_train=64, n_test=32, image_size=16)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10))  # fmt: skip
    trainer = Trainer(model, data, TrainConfig(epochs=1, channels_last="best", quiet=True))
    assert isinstance(trainer.channels_last, bool)
    if trainer.channels_last:
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    trainer.fit()
    with pytest.raises(ConfigError, match="channels_last"):
        TrainConfig(channels_last="fastest")
