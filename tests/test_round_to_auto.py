"""`round_to: auto` in chex, random and dwr: the latency table's measured multiple.

The table's choice is forced (`_choose_round_to` patched) so the tests do not
depend on which widths this machine runs fastest; the rest of the table is
measured into a fresh cache, as a run would. No assertion depends on timings.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from prunelab import latency_table as lt
from prunelab.data import build_data
from prunelab.errors import ConfigError
from prunelab.graph import trace
from prunelab.methods import PruneTask, get_method
from prunelab.methods.latency_budget import resolve_round_to
from prunelab.train import TrainConfig
from tests._nets import ConvBN, randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")

# a cheap table: one timing per grid entry, a few whole-model timings for its fit
SPEC = {"batch": 1, "threads": 1, "repeats": 3, "layer_repeats": 1, "max_rounds": 1}


class _Plain(nn.Module):
    """Three prunable groups (32, 64, 48 channels), no shortcut: every group may shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBN(3, 32), ConvBN(32, 64), ConvBN(64, 48))
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`forced(m)`: the next table measured (in a fresh cache) chooses multiple `m`."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))

    def force(multiple: int) -> None:
        scores = {m: (0.9 if m == multiple else 1.0) for m in lt.ROUND_CANDIDATES}
        monkeypatch.setattr(lt, "_choose_round_to", lambda probe, spec: (multiple, scores))

    return force


def _task(epochs: int = 1) -> PruneTask:
    data = build_data("synthetic", batch_size=16, n_train=64, n_test=16, holdout=32,
                      image_size=16, seed=0)  # fmt: skip
    torch.manual_seed(0)
    train = TrainConfig(epochs=epochs, steps_per_epoch=2, lr=0.01, threads=1, quiet=True,
                        channels_last="off")  # fmt: skip
    return PruneTask(model=randomize_bn(_Plain()).eval(), data=data, target=0.5, metric="flops",
                     train=train, quiet=True, latency=SPEC)  # fmt: skip


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def _run(name: str, task: PruneTask):
    options = {
        "chex": {"interval": 1, "delta0": 0.2, "feature_images": 8, "feature_rows": 64},
        "random": {"candidates": 1, "scoring": "bn", "bn_batches": 1, "tolerance": 0.05},
        "dwr": {"dims": ["width"], "final_epochs": 0, "tolerance": 0.1},
    }[name]
    return get_method(name)(round_to="auto", **options).run(task)


@pytest.mark.parametrize("multiple", [4, 8])
@pytest.mark.parametrize("name", ["chex", "random", "dwr"])
def test_auto_rounds_every_pruned_group_to_the_tables_multiple(
    name: str, multiple: int, forced
) -> None:
    forced(multiple)
    task = _task(epochs=2 if name == "chex" else 1)
    dense = _widths(task.model)
    result = _run(name, copy.deepcopy(task) if name == "chex" else task)
    assert result.info["round_to"] == multiple  # recorded for the report
    widths = _widths(result.model)
    assert len(widths) == len(dense)
    pruned = [(w, full) for w, full in zip(widths, dense, strict=True) if w < full]
    assert pruned, f"{name} pruned nothing: {widths} of {dense}"
    assert all(w % multiple == 0 for w, _ in pruned), (name, multiple, widths)
    if name == "chex":  # a whole number reached the callback; the configured value is kept
        assert result.info["options"]["round_to"] == "auto"


def test_a_whole_round_to_is_used_as_is_without_a_table(monkeypatch) -> None:
    task = _task()
    graph = trace(task.model, task.example_input)
    monkeypatch.setattr(lt, "_measure", lambda *a: pytest.fail("a table was measured"))
    assert resolve_round_to(8, task.model, graph, task) == 8
    with pytest.raises(pytest.fail.Exception, match="a table was measured"):
        resolve_round_to("auto", task.model, graph, task)


@pytest.mark.parametrize("value", ["fast", 0, True, 2.0, None])
@pytest.mark.parametrize("name", ["chex", "random", "dwr", "uniform", "global"])
def test_an_invalid_round_to_is_one_clear_error(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        get_method(name)(round_to=value)
    message = str(info.value)
    assert message.startswith(f"method.round_to={value!r} must be a whole number >= 1")
    assert "'auto'" in message and "\n" not in message


@pytest.mark.parametrize("multiple", [2, 8])  # 4 cannot land within 1% on this tiny net
def test_uniform_reads_the_tables_multiple_under_a_flops_budget_too(multiple: int, forced) -> None:
    forced(multiple)
    task = _task()
    dense = _widths(task.model)
    result = get_method("uniform")(criterion="l1", round_to="auto").run(task)
    widths = _widths(result.model)
    assert any(w < full for w, full in zip(widths, dense, strict=True))
    assert all(w % multiple == 0 for w in widths), widths
