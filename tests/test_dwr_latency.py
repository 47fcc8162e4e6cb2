"""DWR under a latency target: C(d, w, r) fitted to timings, the optimum realised and timed.

No assertion depends on how fast the machine is: the timer is replaced by a known latency
law (a fixed overhead plus FLOPs, and the final model 10% slower than the law, so one nudge
is needed), and the realised model is checked against the cost model fitted to it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prunelab
from prunelab.data import build_data
from prunelab.errors import ConfigError
from prunelab.latency_table import RatioTiming, next_aim
from prunelab.methods import PruneTask, dwr_latency, get_method
from prunelab.methods.dwr_cost import CostModel
from prunelab.methods.dwr_latency import NUDGES
from prunelab.metrics.latency import LatencyStats
from prunelab.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {"batch": 1, "threads": 1, "repeats": 8, "max_rounds": 2}
FAST = {"rounds": 2, "round_epochs": 1, "final_epochs": 1, "probe_batches": 2}


def _task(tmp_path, target: float = 0.6) -> PruneTask:
    data = build_data("synthetic", batch_size=16, n_train=96, n_test=32, holdout=32,
                      image_size=16, seed=0)  # fmt: skip
    torch.manual_seed(0)
    model = prunelab.create("resnet20", num_classes=data.num_classes, widths=(8, 16, 16))
    config = TrainConfig(epochs=1, steps_per_epoch=2, lr=0.02, quiet=True, threads=1,
                         channels_last="off")  # fmt: skip
    return PruneTask(model=model, data=data, target=target, metric="latency", train=config,
                     run_dir=tmp_path, quiet=True, latency=SPEC)  # fmt: skip


def _law(dense, x_dense, model, x) -> float:
    """Latency over the dense model's: a third fixed overhead, the rest FLOPs."""
    flops = prunelab.count(model, x[:1]).flops / prunelab.count(dense, x_dense[:1]).flops
    return 1 / 3 + 2 / 3 * flops


def _fake_timer(monkeypatch) -> list[float]:
    verified: list[float] = []

    def ratios(dense, x, models, spec):
        return {name: _law(dense, x, m, xm) for name, (m, xm) in models.items()}

    def ratio(dense, pruned, x, spec, pruned_input=None):
        value = 1.1 * _law(dense, x, pruned, x if pruned_input is None else pruned_input)
        verified.append(value)
        stats = LatencyStats(1.0, 1.0, 1.0, 1.0, spec.repeats, spec.threads)
        return value, RatioTiming({"dense": stats, "pruned": stats}, 0.0, spec.repeats, True)

    monkeypatch.setattr(dwr_latency, "measured_ratios", ratios)
    monkeypatch.setattr(dwr_latency, "measured_ratio", ratio)
    return verified


@pytest.mark.slow  # six collection rounds and a final fine-tune
def test_dwr_budgets_latency_with_a_cost_model_fitted_to_timings(tmp_path, monkeypatch) -> None:
    verified = _fake_timer(monkeypatch)
    task = _task(tmp_path)
    result = get_method("dwr")(**FAST).run(task)
    info = result.info
    fitted = info["cost_model"]
    cost = CostModel(np.array(fitted["coef"]), np.array(fitted["sides"]),
                     np.array(fitted["scale"]), fitted["max_rel_error"])  # fmt: skip
    assert cost([1.0, 1.0, 1.0])[0] == pytest.approx(1.0, abs=0.02)  # the dense model is 1
    assert info["optimum"]["cost"] == pytest.approx(task.target, rel=1e-6)
    notes = info["latency"]
    attempts = notes["attempts"]
    assert 1 <= len(attempts) <= NUDGES + 1 and attempts[0]["aim"] == task.target
    assert [a["measured"] for a in attempts] == verified
    assert len(attempts) >= 2  # 10% slower than C predicts: the first realisation misses
    for t in attempts:  # the realised point sits on the aim up to channel/pixel rounding
        assert t["predicted"] == pytest.approx(float(cost(t["point"])[0]))
        assert abs(t["predicted"] / t["aim"] - 1) <= 0.15
    for i in range(1, len(attempts)):  # each nudge re-aims from the attempts so far
        assert attempts[i]["aim"] == pytest.approx(next_aim(attempts[:i], task.target))
    best = min(attempts, key=lambda a: abs(a["measured"] / task.target - 1))
    assert notes["measured"] == best["measured"] == info["achieved_latency"]
    assert notes["met"] == (abs(notes["measured"] / task.target - 1) <= 0.05)
    assert info["within_tolerance"] == notes["met"]
    if len(attempts) > 1:  # the nudged aim divides the 10% out
        assert attempts[1]["aim"] == pytest.approx(task.target / 1.1, rel=0.05)
    pixels = info["chosen"]["pixels"]
    assert result.model.prunelab_input_size == (3, pixels, pixels)


def test_the_papers_flops_constraint_is_refused_with_latency(tmp_path) -> None:
    with pytest.raises(ConfigError, match="with metric=latency use cost: measured"):
        get_method("dwr")(cost="paper", **FAST).run(_task(tmp_path))
    task = _task(tmp_path)
    task.metric = "params"
    with pytest.raises(ConfigError, match="dwr budgets flops or latency, not params"):
        get_method("dwr")().check(task)
