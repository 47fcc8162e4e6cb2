"""Random channel pruning: budgeted sampling, candidate scoring, the method end to end."""

from __future__ import annotations

import json

import pytest
import torch

import prunelab
from prunelab import planners
from prunelab.data import build_data
from prunelab.errors import ConfigError, InfeasibleBudgetError
from prunelab.graph import prune, trace
from prunelab.graph.cost import base_cost, plan_cost
from prunelab.methods import PruneTask, get_method
from prunelab.methods.finetune import recalibrate_bn
from prunelab.methods.random_scoring import reconstruct, replay
from prunelab.methods.random_search import sample_architectures
from prunelab.models.layers import reinitialise
from prunelab.train import TrainConfig

X = torch.zeros(1, 3, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = prunelab.create("resnet20").eval()
    graph = trace(model, X)
    return model, graph, planners.select_groups(graph)


def _data(holdout: int = 32):
    return build_data("synthetic", batch_size=16, n_train=96, n_test=32, holdout=holdout,
                      image_size=16)  # fmt: skip


def _task(model, data, **kw) -> PruneTask:
    train = TrainConfig(epochs=1, steps_per_epoch=1, lr=0.01, quiet=True)
    return PruneTask(model, data, target=0.5, train=train, quiet=True, **kw)


QUICK = {"candidates": 3, "bn_batches": 2, "score_steps": 2, "criterion_batches": 1}


@pytest.mark.parametrize(
    ("sampling", "metric", "round_to", "tolerance"),
    [("rescale", "flops", 1, 0.02), ("rescale", "params", 8, 0.02), ("reject", "flops", 1, 0.05)],
)
def test_every_candidate_meets_the_budget(resnet, sampling, metric, round_to, tolerance) -> None:
    model, graph, groups = resnet
    sampled = sample_architectures(graph, groups, 0.5, metric, n=12, round_to=round_to,
                                   tolerance=tolerance, sampling=sampling, seed=3)  # fmt: skip
    assert len(sampled.counts) == 12
    assert 0 < sampled.acceptance_rate <= 1
    if sampling == "reject":
        assert sampled.acceptance_rate < 1  # raw uniform draws rarely land in the window
    scores = planners.score_groups(model, groups, "l1")
    base = base_cost(graph)[metric]
    for counts in sampled.counts:
        plan = planners.plan_from_counts(graph, scores, counts)
        assert abs(plan_cost(plan)[metric] / base - 0.5) <= 0.5 * tolerance + 1e-12
        for g in groups:
            assert counts[g.index] >= min(g.size, round_to)
            assert counts[g.index] % round_to == 0 or counts[g.index] == g.size
    assert len({tuple(sorted(c.items())) for c in sampled.counts}) == 12  # no duplicates


def test_same_seed_same_candidates_and_another_seed_others(resnet) -> None:
    _, graph, groups = resnet
    a = sample_architectures(graph, groups, 0.5, n=6, seed=7)
    b = sample_architectures(graph, groups, 0.5, n=6, seed=7)
    c = sample_architectures(graph, groups, 0.5, n=6, seed=8)
    assert a.counts == b.counts and a.drawn == b.drawn
    assert a.counts != c.counts


def test_ratios_vary_across_groups_and_respect_r_min(resnet) -> None:
    _, graph, groups = resnet
    sampled = sample_architectures(graph, groups, 0.5, n=8, r_min=0.25, seed=1)
    for counts in sampled.counts:
        ratios = [counts[g.index] / g.size for g in groups]
        assert min(ratios) >= 0.25 - 1 / 16 and len(set(ratios)) > 2


def test_impossible_budgets_and_bad_options_say_what_is_wrong(resnet) -> None:
    _, graph, groups = resnet
    with pytest.raises(InfeasibleBudgetError, match=r"r_min=0\.9"):
        sample_architectures(graph, groups, 0.3, r_min=0.9)
    with pytest.raises(InfeasibleBudgetError, match="draws"):
        sample_architectures(graph, groups, 0.5, n=5, tolerance=1e-4, sampling="reject",
                             max_draws=20)  # fmt: skip
    method = get_method("random")
    bad_options = [
        {"scoring": "magic"}, {"criterion": "nope"}, {"r_min": 0}, {"tolerance": 1.5},
        {"sampling": "grid"}, {"from_scratch": True, "scoring": "bn"}, {"colour": 1},
    ]  # fmt: skip
    for bad in bad_options:
        with pytest.raises(ConfigError):
            method(**bad)


def test_scoring_without_a_holdout_split_is_a_config_error() -> None:
    task = _task(prunelab.create("resnet20"), _data(holdout=0))
    with pytest.raises(ConfigError, match="holdout"):
        get_method("random")(**QUICK).run(task)


def test_a_holdout_prefix_is_scored_on_every_class_and_the_same_images(monkeypatch) -> None:
    # an image folder's hold-out is sorted by class: its first batches are one class
    from prunelab.methods import random_scoring

    data = build_data("synthetic", batch_size=16, n_train=96, n_test=16, holdout=64,
                      image_size=16, num_classes=4)  # fmt: skip
    hold = data.holdout
    hold.indices = hold.indices[hold.labels[hold.indices].argsort(stable=True)]
    seen = []

    def capture(model, loader, max_batches=None):
        seen.append(next(iter(loader))[1].tolist())
        return 0.0

    monkeypatch.setattr(random_scoring, "accuracy", capture)
    setup = random_scoring.ScoringSetup("bn", data, data.train.state_dict(), bn_batches=1,
                                        eval_batches=1)  # fmt: skip
    for _ in range(2):
        random_scoring.score_candidate(setup, prunelab.create("resnet20", num_classes=4))
    assert seen[0] == seen[1] and set(seen[0]) == {0, 1, 2, 3}


def test_search_end_to_end_picks_the_best_scored_candidate(capsys) -> None:
    torch.manual_seed(1)
    model = prunelab.create("resnet20")
    data = _data()
    train = TrainConfig(epochs=1, steps_per_epoch=1, lr=0.01, quiet=True)
    task = PruneTask(model, data, target=0.5, seed=2, train=train)
    result = get_method("random")(**QUICK, round_to=1).run(task)
    info = result.info
    json.dumps(info)  # the report stores it
    scores = [c["score"] for c in info["candidates"]]
    assert len(scores) == 3 and info["winner"] == scores.index(max(scores))
    assert info["acceptance_rate"] > 0 and info["drawn"] >= 3
    for c in info["candidates"]:
        assert abs(c["flops_ratio"] - 0.5) <= 0.01 + 1e-12
        assert set(c["ratios"]) == {g["name"] for g in info["groups"]}
    dense, small = prunelab.count(model, X), prunelab.count(result.model, X)
    assert small.flops / dense.flops == pytest.approx(info["achieved"], rel=1e-9)
    # A residual stage is one group: its blocks keep the same width.
    widths = {result.model.layer1[i].bn2.num_features for i in range(3)}
    assert widths == {result.model.bn1.num_features}
    assert len(result.history) == 1
    out = capsys.readouterr().out
    assert "candidate 3/3" in out and "best" in out


def test_same_seed_same_search() -> None:
    infos = []
    for _ in range(2):
        torch.manual_seed(0)
        task = _task(prunelab.create("resnet20"), _data(), seed=5)
        infos.append(get_method("random")(**QUICK, criterion="random").run(task).info)
    strip = [[{k: c[k] for k in ("ratios", "score")} for c in i["candidates"]] for i in infos]
    assert strip[0] == strip[1]


@pytest.mark.parametrize(("scoring", "criterion"), [("finetune", "es"), ("reconstruct", "kl")])
def test_other_scoring_modes_and_data_driven_criteria_run(scoring, criterion) -> None:
    torch.manual_seed(0)
    task = _task(prunelab.create("resnet20"), _data())
    options = {**QUICK, "candidates": 2}
    result = get_method("random")(**options, scoring=scoring, criterion=criterion).run(task)
    assert all(0 <= c["score"] <= 100 for c in result.info["candidates"])
    assert result.info["options"]["scoring"] == scoring


def test_reconstruction_pulls_feature_maps_towards_the_original(resnet) -> None:
    model, graph, _ = resnet
    plan = planners.uniform(model, graph, 0.5)
    small = prune(model, plan)
    data = _data()
    state = data.train.state_dict()
    recalibrate_bn(small, replay(data, state), 3)
    losses = reconstruct(model, small, plan, replay(data, state), steps=12, lr=1e-3)
    assert len(losses) == 12 and losses[-1] < losses[0]


def test_from_scratch_trains_a_reinitialised_random_architecture() -> None:
    torch.manual_seed(0)
    model = prunelab.create("resnet20")
    with torch.no_grad():
        model.bn1.weight.fill_(3.0)
    task = _task(model, _data(holdout=0))  # one unscored architecture needs no hold-out
    task.train = task.train.replace(epochs=0)
    result = get_method("random")(candidates=1, from_scratch=True).run(task)
    assert torch.all(result.model.bn1.weight == 1.0)  # fresh initialisation, not inherited
    assert result.info["candidates"][0]["score"] is None
    # Re-initialisation is repeatable and leaves the global random state alone.
    state = torch.random.get_rng_state()
    a = reinitialise(prune(model, planners.uniform(model, trace(model, X), 0.5)), seed=4)
    b = reinitialise(prune(model, planners.uniform(model, trace(model, X), 0.5)), seed=4)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_from_scratch_search_scores_by_short_training() -> None:
    torch.manual_seed(0)
    task = _task(prunelab.create("resnet20"), _data())
    task.train = task.train.replace(epochs=0)
    result = get_method("random")(**QUICK, from_scratch=True, scoring="finetune").run(task)
    assert len(result.info["candidates"]) == 3
    assert result.info["options"]["from_scratch"] is True
    # Scoring trained every candidate a few steps; the winner starts its training afresh.
    assert torch.all(result.model.bn1.weight == 1.0) and torch.all(result.model.bn1.bias == 0)
    winner = result.info["candidates"][result.info["winner"]]
    assert abs(winner["flops_ratio"] - 0.5) <= 0.01 + 1e-12
