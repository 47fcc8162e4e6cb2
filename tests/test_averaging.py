"""WeightAveraging: EMA and uniform (SWA) averages of the weights, their evaluation and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.errors import ConfigError
from prunelab.train import (
    CHECKPOINT_NAME,
    Callback,
    TrainConfig,
    Trainer,
    WeightAveraging,
    load_checkpoint,
    read_metrics,
)
from tests._helpers_train import state_equal, tiny_cnn, tiny_data

pytestmark = pytest.mark.usefixtures("one_thread")


class Snapshots(Callback):
    """Records the model's state after every step, with the epoch it belongs to."""

    def __init__(self) -> None:
        self.states: list[tuple[int, dict[str, torch.Tensor]]] = []

    def on_step_end(self, trainer: Trainer) -> None:
        self.states.append(
            (trainer.epoch, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        )


def config(**kw) -> TrainConfig:
    base = {"epochs": 3, "steps_per_epoch": 4, "lr": 0.05, "quiet": True, "weight_decay": 0.0}
    return TrainConfig(**{**base, **kw})


def floats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if v.is_floating_point()}


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_ema_and_uniform_average_match_the_trajectory():
    snaps = Snapshots()
    ema = WeightAveraging(decay=0.9, start_epoch=1)
    swa = WeightAveraging(decay=None, start_epoch=1)
    model = tiny_cnn()
    Trainer(model, tiny_data(), config(), [snaps, ema, swa]).fit()

    tail = [s for epoch, s in snaps.states if epoch >= 1]
    assert len(tail) == 8 and ema.count == swa.count == 8
    expected_ema = {k: v.clone() for k, v in floats(tail[0]).items()}
    for state in tail[1:]:
        for k, v in expected_ema.items():
            v.mul_(0.9).add_(state[k], alpha=0.1)
    assert_close(floats(ema.averaged), expected_ema)
    mean = {k: torch.stack([s[k] for s in tail]).mean(0) for k in floats(tail[0])}
    assert_close(floats(swa.averaged), mean)
    # integer buffers (BN's num_batches_tracked) follow the model, they are not averaged
    last = snaps.states[-1][1]
    ints = [k for k, v in last.items() if not v.is_floating_point()]
    assert ints and all(torch.equal(swa.averaged[k], last[k]) for k in ints)
    # the average differs from the final weights, and training used its own weights
    assert not state_equal(floats(swa.averaged), floats(model.state_dict()))
    assert state_equal(model.state_dict(), last)


def test_average_is_evaluated_each_epoch_and_can_be_applied(tmp_path: Path):
    swa = WeightAveraging(decay=None, start_epoch=1, name="tail")
    model = tiny_cnn()
    trainer = Trainer(model, tiny_data(), config(run_dir=str(tmp_path)), [swa])
    trainer.fit()
    epochs = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"]
    assert "tail_test_top1" not in epochs[0]  # nothing averaged before epoch 1
    assert all(
        {"tail_test_top1", "tail_test_top5", "tail_test_loss"} <= r.keys() for r in epochs[1:]
    )
    own = {k: v.clone() for k, v in model.state_dict().items()}
    assert epochs[-1]["test_top1"] == trainer.evaluate(log=False)["top1"]  # own weights back
    swa.apply_to(model)
    again = trainer.evaluate(log=False)
    assert again["loss"] == pytest.approx(epochs[-1]["tail_test_loss"], rel=1e-6)
    assert swa.final_top1(trainer) == epochs[-1]["tail_test_top1"] == again["top1"]
    assert not state_equal(own, model.state_dict())
    silent = WeightAveraging(decay=0.9, evaluate=False)
    quiet_run = Trainer(tiny_cnn(), tiny_data(), config(epochs=1), [silent])
    quiet_run.fit()
    with pytest.raises(ConfigError, match="not evaluated"):
        silent.final_top1(quiet_run)


def seeded_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_cnn()


def test_average_resumes_from_the_checkpoint(tmp_path: Path):
    # a constant lr, so that stopping after 2 of 3 epochs follows the same path
    whole = WeightAveraging(decay=0.8)
    Trainer(seeded_cnn(), tiny_data(), config(schedule="constant"), [whole]).fit()

    first = WeightAveraging(decay=0.8)
    cut = config(schedule="constant", epochs=2, run_dir=str(tmp_path))
    Trainer(seeded_cnn(), tiny_data(), cut, [first]).fit()
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)["callbacks"][0]
    assert saved["count"] == 8 and state_equal(saved["averaged"], first.averaged)
    resumed = WeightAveraging(decay=0.8)
    rest = cut.replace(epochs=3, resume=True)
    Trainer(tiny_cnn(), tiny_data(), rest, [resumed]).fit()
    assert resumed.count == whole.count == 12
    assert_close(resumed.averaged, whole.averaged)


def test_average_restarts_when_the_model_changes_shape():
    avg = WeightAveraging(decay=0.5)
    avg.update(tiny_cnn(width=8))
    avg.update(tiny_cnn(width=8))
    assert avg.count == 2
    wider = tiny_cnn(width=12)
    avg.update(wider)
    assert avg.count == 1 and state_equal(avg.averaged, wider.state_dict())


def test_bad_settings_and_empty_average_are_clear_errors():
    with pytest.raises(ConfigError, match="decay"):
        WeightAveraging(decay=1.0)
    with pytest.raises(ConfigError, match="start_epoch"):
        WeightAveraging(start_epoch=-1)
    with pytest.raises(ConfigError, match="empty"):
        WeightAveraging(start_epoch=5).apply_to(tiny_cnn())
