"""Knowledge distillation: the loss formula, a frozen teacher, and its wiring into fine-tuning."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from prunelab import models
from prunelab.data import build_data
from prunelab.errors import ConfigError
from prunelab.methods import PruneTask
from prunelab.methods.finetune import distillation, fit
from prunelab.train import Callback, Distillation, TrainConfig, Trainer
from prunelab.train.distill import check_distill, kd_term

pytestmark = pytest.mark.usefixtures("one_thread")


def _data():
    return build_data("synthetic", n_train=64, n_test=32, batch_size=16, seed=0)


def _hand_kd(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    p_teacher = torch.softmax(teacher / t, dim=1)
    log_ratio = torch.log(p_teacher) - torch.log_softmax(student / t, dim=1)
    return (p_teacher * log_ratio).sum(dim=1).mean() * t * t


class _Recorder(Callback):
    """Keeps the first batch and the first step's extra terms."""

    def __init__(self) -> None:
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_step_start(self, trainer, batch) -> None:
        if self.batch is None:
            self.batch = (batch[0].clone(), batch[1].clone())


def test_loss_equals_hand_computation_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    assert torch.allclose(kd_term(student, teacher, 4.0), _hand_kd(student, teacher, 4.0),
                          atol=1e-6)  # fmt: skip
    assert float(kd_term(teacher, teacher, 4.0)) == pytest.approx(0.0, abs=1e-6)

    class _T:  # what extra_loss reads from the trainer
        criterion = torch.nn.CrossEntropyLoss()

    cb = Distillation(torch.nn.Identity(), weight=0.9, temperature=4.0)
    cb._logits = teacher
    ce = F.cross_entropy(student, labels)
    total = ce + cb.extra_loss(_T(), student, labels)
    expected = 0.1 * ce + 0.9 * _hand_kd(student, teacher, 4.0)
    assert torch.allclose(total, expected, atol=1e-6)


def test_teacher_never_changes_and_step_differs_only_by_the_kd_term() -> None:
    data = _data()
    teacher = models.create("resnet20", num_classes=10)
    before = copy.deepcopy(teacher.state_dict())
    torch.manual_seed(1)
    student = models.create("resnet20", num_classes=10)
    config = TrainConfig(epochs=1, steps_per_epoch=1, lr=0.05, channels_last="off", seed=3)

    plain_rec, kd_rec = _Recorder(), _Recorder()
    plain = Trainer(copy.deepcopy(student), data, config, [plain_rec])
    plain.fit()
    cb = Distillation(teacher, weight=0.5, temperature=2.0)
    distilled = Trainer(copy.deepcopy(student), _data(), config, [kd_rec, cb])
    distilled.fit()

    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN buffers included
    assert all(not p.requires_grad for p in teacher.parameters())
    assert torch.equal(plain_rec.batch[0], kd_rec.batch[0])
    first_plain, first_kd = plain.history[0], distilled.history[0]
    # the task loss of the first step is the same; only the KD term is added on top
    assert first_kd["train_loss"] == pytest.approx(first_plain["train_loss"], rel=1e-6)
    x, y = kd_rec.batch
    with torch.no_grad():
        out = copy.deepcopy(student).train()(x)
        t_out = copy.deepcopy(teacher).eval()(x)
    expected = 0.5 * (_hand_kd(out, t_out, 2.0) - F.cross_entropy(out, y))
    assert first_kd["train_extra_loss"] == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    assert "train_extra_loss" not in first_plain


def test_fit_adds_the_teacher_from_the_task_and_refuses_without_one(tmp_path) -> None:
    data = _data()
    dense = models.create("resnet20", num_classes=10)
    train = TrainConfig(epochs=1, steps_per_epoch=1, channels_last="off",
                        distill={"teacher": "dense"})  # fmt: skip
    assert train.distill == {"teacher": "dense", "weight": 0.9, "temperature": 4.0}
    task = PruneTask(model=dense, data=data, train=train, teacher=dense)
    (cb,) = distillation(task, train)
    assert cb.teacher is not dense  # a private copy: the run's dense model is left alone
    _, history, _ = fit(task, copy.deepcopy(dense), None)
    assert "train_extra_loss" in history[0]
    with pytest.raises(ConfigError, match="teacher=dense needs a trained dense model"):
        fit(PruneTask(model=dense, data=data, train=train), copy.deepcopy(dense), None)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"teachr": "dense"}, "no option"), ({"weight": 1.5}, r"\[0, 1\]"),
     ({"temperature": 0}, "> 0"), ({"weight": "abc"}, "numbers"), ("dense", "mapping")],
)  # fmt: skip
def test_bad_distill_settings_are_config_errors(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_distill(options)
