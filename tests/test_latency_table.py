"""Latency as a cost: the per-layer table, its cache, and plans that budget latency.

No assertion here depends on how fast the machine is: timings are compared
with the table's own measurements and spread, and plans with the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import prunelab
from prunelab import latency_table as lt
from prunelab.errors import ConfigError
from prunelab.latency_table import LatencySpec, LatencyTable, latency_table
from prunelab.metrics.latency import LatencyStats
from prunelab.runtimes import onnx_runner
from tests._nets import ConvBN, randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {"batch": 1, "threads": 1, "repeats": 15, "layer_repeats": 3, "max_rounds": 2}


class _Tiny(nn.Module):
    """Wide enough (64 channels) for the rounding probe and big enough (16x16) that compute,
    not per-call overhead, decides its time; small enough to time in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, 64)
        self.body = nn.Sequential(ConvBN(64, 64), ConvBN(64, 64, groups=64), ConvBN(64, 96))
        self.head = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_CACHE", str(cache))
        torch.set_num_threads(1)
        model = randomize_bn(_Tiny()).eval()
        graph = prunelab.trace(model, torch.zeros(1, 3, 16, 16))
        table = latency_table(model, graph, SPEC)
        yield model, graph, table, cache


def _reachable(graph, table: LatencyTable, share: float) -> float:
    """A target `share` of the way from the table's thinnest model to the dense one."""
    floor = table.predict_plan(lt._uniform_plan(graph, 0.0, 1)) / table.dense_ms(graph)
    assert floor < 1  # the table never predicts a thinner model slower
    return round(float(floor + share * (1 - floor)), 2)


def test_spec_keys_are_checked() -> None:
    assert LatencySpec.from_config({"batch": 1, "runtime": "openvino"}).batch == 1
    with pytest.raises(ConfigError, match=r"unknown latency option\(s\) \['thread'\]"):
        LatencySpec.from_config({"thread": 2})
    with pytest.raises(ConfigError, match=r"latency\.runtime"):
        LatencySpec.from_config({"runtime": "tensorrt"})
    with pytest.raises(ConfigError, match="torch runtime only"):
        LatencySpec.from_config({"runtime": "onnxruntime", "layout": "channels_last"})
    with pytest.raises(ConfigError, match=r"latency\.batch=0 must be a whole number >= 1"):
        LatencySpec.from_config({"batch": 0})


def test_dense_prediction_is_the_dense_measurement_within_the_tables_spread(tiny_table) -> None:
    _, graph, table, _ = tiny_table
    dense = table.dense_measured
    spread = max(c["p90_ms"] - c["p10_ms"] for c in table.calibration)
    assert abs(table.dense_ms(graph) - dense["median_ms"]) <= spread
    # and the table's grid is what it says: the dense widths are its last grid points
    widths = prunelab.graph.cost.cost_model(graph).layer_widths({})
    assert np.array_equal(table.grid_out[:, -1], widths[0])
    assert np.array_equal(table.grid_in[:, -1], widths[1])


def test_prediction_interpolates_the_timed_grid(tiny_table) -> None:
    _, _, table, _ = tiny_table
    at_grid = table.layer_ms(table.grid_out[:, 1], table.grid_in[:, 2])
    rows = np.arange(len(table.layers))
    assert np.allclose(at_grid, table.times[rows, 2, 1])
    between = table.layer_ms((table.grid_out[:, 1] + table.grid_out[:, 2]) / 2, table.grid_in[:, 3])
    expected = (table.times[rows, 3, 1] + table.times[rows, 3, 2]) / 2
    assert np.allclose(between, np.maximum(expected, 0))


def test_a_latency_target_is_met_against_the_same_table(tiny_table) -> None:
    model, graph, table, _ = tiny_table
    dense = table.dense_ms(graph)
    target = _reachable(graph, table, 0.6)
    plan = prunelab.planners.for_cost(
        model, graph, target, metric="latency", latency=table, verify=False
    )
    assert table.predict_plan(plan) / dense == pytest.approx(target, rel=0.01)
    coarse = prunelab.planners.for_cost(
        model, graph, target, metric="latency", latency=table, verify=False, round_to="auto",
        tolerance=0.2,
    )  # fmt: skip
    m = table.round_to
    assert all(len(k) % m == 0 for g, k in coarse.keep.items() if graph.groups[g].size >= m)


def test_the_table_is_cached_and_reloaded_not_remeasured(tiny_table, monkeypatch) -> None:
    model, graph, table, cache = tiny_table
    files = list((cache / "latency").glob("*.json"))
    assert len(files) == 1
    monkeypatch.setenv("PRUNELAB_CACHE", str(cache))
    monkeypatch.setattr(lt, "_measure", lambda *a: pytest.fail("measured again"))
    again = latency_table(model, graph, {**SPEC, "repeats": 3})  # repeats do not change it
    assert again.dense_ms(graph) == table.dense_ms(graph)
    assert LatencyTable.from_json(table.to_json()).predict(graph) == table.predict(graph)
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        latency_table(model, graph, {**SPEC, "batch": 2})  # another batch: another table


def test_a_verified_plan_records_what_was_timed(tiny_table) -> None:
    model, graph, table, _ = tiny_table
    target = _reachable(graph, table, 0.8)
    plan = prunelab.planners.for_cost(
        model, graph, target, metric="latency", latency=table, max_nudges=1, tolerance=0.05
    )
    notes = plan.notes["latency"]
    assert 1 <= len(notes["attempts"]) <= 2
    assert notes["met"] == (abs(notes["measured"] / target - 1) <= 0.05)
    assert notes["spec"] == table.spec


@pytest.mark.parametrize(
    "layer",
    [nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False),
     nn.Conv2d(8, 12, (1, 3), 1, (0, 1), groups=4), nn.Linear(8, 5)],
    ids=["strided", "depthwise", "grouped", "linear"],
)  # fmt: skip
def test_a_single_layer_onnx_model_computes_the_layer(layer: nn.Module) -> None:
    x = torch.randn(3, 8, 6, 6) if isinstance(layer, nn.Conv2d) else torch.randn(3, 8)
    run = onnx_runner(lt._single_layer_onnx(layer, x), x, "onnxruntime", 1)
    with torch.no_grad():
        expected = layer(x).numpy()
    assert np.abs(run()[0] - expected).max() <= 1e-5 * np.abs(expected).max()


def test_planning_with_an_unknown_metric_is_an_error(tiny_table) -> None:
    model, graph, _, _ = tiny_table
    with pytest.raises(ConfigError, match="metric must be"):
        prunelab.planners.for_cost(model, graph, 0.5, metric="energy")


def test_a_table_of_another_architecture_is_refused(tiny_table) -> None:
    _, _, table, _ = tiny_table
    other = prunelab.create("resnet20", widths=(4, 8, 8))
    with pytest.raises(ConfigError, match="another architecture"):
        table.predict(prunelab.trace(other, torch.zeros(1, 3, 32, 32)))


def test_cache_folder_follows_prunelab_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    assert lt._cache_dir() == tmp_path / "latency"


def test_prune_with_an_unknown_latency_key_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys
) -> None:
    from prunelab.cli import main

    run = tmp_path / "run"
    argv = ["prune", "--run-dir", str(run), "metric=latency", "latency.thread=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown latency option(s) ['thread']" in err
    assert not run.exists()


def test_a_refused_metric_names_the_methods_that_budget_it() -> None:
    from prunelab.methods import PruneTask, list_methods

    task = PruneTask(model=nn.Linear(2, 2), data=None, metric="params")  # type: ignore[arg-type]
    able = [n for n, cls in list_methods().items() if "params" in cls.metrics]
    assert "chex" in able and "torch_pruning" not in able
    with pytest.raises(ConfigError) as info:
        task.require_metric("torch_pruning", "flops")
    assert str(info.value) == (
        f"torch_pruning budgets flops, not params; use metric=flops "
        f"(metric=params: methods {', '.join(sorted(able))})"
    )
    task.metric = "flops"
    task.require_metric("torch_pruning", "flops")


@pytest.mark.parametrize("name", ["uniform", "global", "random", "chex", "dwr", "bwcp"])
def test_methods_that_budget_latency_accept_it(name: str) -> None:
    from prunelab.data import build_data
    from prunelab.methods import PruneTask, get_method

    method = get_method(name)
    assert "latency" in method.metrics
    data = build_data("synthetic", batch_size=4, n_train=8, n_test=4, holdout=4, image_size=8)
    method().check(PruneTask(model=nn.Linear(2, 2), data=data, metric="latency"))  # no error


@pytest.fixture
def table_timer(tiny_table, monkeypatch):
    """Verification timings as the table predicts them, 6% slower (a fixed table error).

    The methods' tests check how they use the table and its measured error; a real timing
    under heavy load can be off by several times, which would move the aim they are
    checked against (and make the test depend on the machine's load).
    """
    from prunelab import planners
    from prunelab.methods import latency_budget
    from prunelab.metrics.latency import LatencyStats

    _, graph, table, _ = tiny_table

    def timed(dense, pruned, x, spec, pruned_input=None, spread=lt.VERIFY_SPREAD):
        ratio = 1.06 * _table_ratio_of(pruned, table, graph)
        ms = {"dense": 1.0, "pruned": ratio}
        stats = {k: LatencyStats(v, v, v, v, spec.repeats, spec.threads) for k, v in ms.items()}
        return ratio, lt.RatioTiming(stats, 0.0, spec.repeats, True)

    monkeypatch.setattr(planners, "measured_ratio", timed)
    monkeypatch.setattr(latency_budget, "measured_ratio", timed)


def test_random_search_budgets_latency_through_the_table(tiny_table, table_timer) -> None:
    """Candidates land in the window around the error-corrected aim; the winner is timed."""
    from prunelab.data import build_data
    from prunelab.methods import PruneTask, get_method
    from prunelab.train import TrainConfig

    model, graph, table, _ = tiny_table
    target = _reachable(graph, table, 0.7)
    data = build_data("synthetic", batch_size=16, n_train=64, n_test=16, holdout=32,
                      image_size=16)  # fmt: skip
    train = TrainConfig(epochs=1, steps_per_epoch=1, lr=0.01, threads=1, quiet=True,
                        channels_last="off")  # fmt: skip
    task = PruneTask(model=model, data=data, target=target, metric="latency", train=train,
                     quiet=True, latency=SPEC)  # fmt: skip
    method = get_method("random")(candidates=3, round_to=1, scoring="bn", bn_batches=1,
                                  tolerance=0.05)  # fmt: skip
    result = method.run(task)
    notes = result.info["latency"]
    assert notes["spec"] == table.spec  # the cached table of this spec, not a new one
    aim = notes["aim"]
    assert notes["table_error"] == pytest.approx(1.06)  # the uniform plan's, as timed
    assert aim == pytest.approx(min(1.0, target / notes["table_error"]))
    dense_ms = table.dense_ms(graph)
    pruned_graph = prunelab.trace(result.model, torch.zeros(1, 3, 16, 16))
    assert len(pruned_graph.layers) == len(graph.layers)
    for record in result.info["candidates"]:  # predicted ratio (corrected) in the window
        kept = {g.index: record["kept"][g.name] for g in graph.groups if g.name in record["kept"]}
        masks = {g: np.arange(graph.groups[g].size) < k for g, k in kept.items()}
        predicted = table.predict(graph, masks) / dense_ms
        assert aim * 0.95 - 1e-9 <= predicted <= aim * 1.05 + 1e-9
    winner = result.info["candidates"][result.info["winner"]]
    assert winner["latency_ratio"] == notes["measured"] == result.info["achieved"]
    assert notes["met"] == (abs(notes["measured"] / target - 1) <= 0.05)


def _task(model, target: float, epochs: int = 1):
    from prunelab.data import build_data
    from prunelab.methods import PruneTask
    from prunelab.train import TrainConfig

    data = build_data("synthetic", batch_size=16, n_train=64, n_test=16, holdout=32,
                      image_size=16)  # fmt: skip
    train = TrainConfig(epochs=epochs, steps_per_epoch=2, lr=0.01, threads=1, quiet=True,
                        channels_last="off")  # fmt: skip
    return PruneTask(model=model, data=data, target=target, metric="latency", train=train,
                     quiet=True, latency=SPEC)  # fmt: skip


def _table_ratio_of(pruned: nn.Module, table: LatencyTable, graph) -> float:
    """The table's prediction from the pruned model's own layer shapes."""
    shapes = [pruned.get_submodule(n).weight.shape[:2] for n in table.layers]
    c_out = np.array([s[0] for s in shapes], dtype=np.float64)
    c_in = np.array([s[1] for s in shapes], dtype=np.float64)
    return table.predict_widths(c_out, c_in) / table.dense_ms(graph)


def test_chex_budgets_latency_through_the_table(tiny_table, table_timer) -> None:
    """CHEX's allocation meets the error-corrected aim in the table; the result is timed."""
    import copy

    from prunelab.methods import get_method

    model, graph, table, _ = tiny_table
    target = _reachable(graph, table, 0.6)
    method = get_method("chex")(interval=1, delta0=0.2, feature_images=8, feature_rows=64)
    result = method.run(_task(copy.deepcopy(model), target, epochs=2))
    notes = result.info["latency"]
    assert notes["spec"] == table.spec
    assert notes["aim"] == pytest.approx(min(1.0, target / notes["table_error"]))
    # the pruned model is what the table was asked about, and it sits on the aim
    assert _table_ratio_of(result.model, table, graph) == pytest.approx(notes["table_ratio"])
    assert notes["table_ratio"] == pytest.approx(notes["aim"], rel=0.011)
    assert notes["predicted"] == pytest.approx(notes["table_ratio"] * notes["table_error"])
    assert result.info["achieved_latency"] == notes["measured"]
    assert notes["met"] == (abs(notes["measured"] / target - 1) <= 0.05)
    assert notes["timing"]["repeats"] >= SPEC["repeats"]


def _fake_rounds(monkeypatch, make_samples) -> list[int]:
    """Replace the timer with `make_samples(round) -> (dense, pruned)` samples; log the rounds."""
    from prunelab.metrics.latency import LatencyStats

    calls: list[int] = []

    def fake(runners, repeats, warmup, threads):
        dense, pruned = make_samples(len(calls), repeats)
        calls.append(repeats)
        return {name: LatencyStats(0, 0, 0, 0, repeats, threads, samples_ms=tuple(v))
                for name, v in (("dense", dense), ("pruned", pruned))}  # fmt: skip

    monkeypatch.setattr(lt, "time_callables", fake)
    return calls


def test_verification_stops_when_the_ratio_is_known_and_keeps_timing_while_noisy(
    monkeypatch,
) -> None:
    model = nn.Conv2d(3, 4, 1)
    spec = LatencySpec(batch=1, threads=1, repeats=10, max_rounds=6)
    x = torch.zeros(1, 3, 4, 4)
    gen = np.random.default_rng(1)
    # common-mode noise (both models slowed alike in a round) cancels in paired rounds
    steady = _fake_rounds(monkeypatch, lambda r, n: ((d := 2 + gen.random(n)), 0.5 * d))
    ratio, timing = lt.measured_ratio(model, model, x, spec)
    assert ratio == pytest.approx(0.5) and timing.spread == 0 and timing.settled
    assert steady == [10] and timing.repeats == 10
    # independent noise of +-50% on the pruned model: never settles, stops at the cap
    noisy = _fake_rounds(monkeypatch, lambda r, n: (np.full(n, 2.0), 1 + gen.random(n)))
    ratio, timing = lt.measured_ratio(model, model, x, spec)
    assert noisy == [10] * 6 and timing.repeats == 60 and not timing.settled
    assert timing.spread > lt.VERIFY_SPREAD
    # noise that a few rounds average down: stops before the cap, once the spread is small
    some = _fake_rounds(monkeypatch, lambda r, n: (np.full(n, 2.0), 1 + 0.1 * gen.random(n)))
    _, timing = lt.measured_ratio(model, model, x, spec, spread=0.008)
    assert 1 < len(some) < 6 and timing.settled and timing.spread <= 0.008


def test_bwcp_steers_its_hard_masks_to_the_latency_aim_through_the_table(
    tiny_table, table_timer
) -> None:
    """The controller and the threshold search read the table; the export is timed."""
    import copy

    from prunelab.methods import get_method

    model, graph, table, _ = tiny_table
    target = _reachable(graph, table, 0.6)
    method = get_method("bwcp")(lambda1=1e-3, lambda2=2e-3, target_control=True,
                                control_every=1, warmup_epochs=0)  # fmt: skip
    result = method.run(_task(copy.deepcopy(model), target, epochs=2))
    info, notes = result.info, result.info["latency"]
    assert notes["spec"] == table.spec
    assert info["final_ratio"] == notes["table_ratio"]
    # the exported model is what the table was asked about, and it sits on the aim
    assert _table_ratio_of(result.model, table, graph) == pytest.approx(notes["table_ratio"])
    assert notes["table_ratio"] == pytest.approx(notes["aim"], rel=0.03)
    assert notes["predicted"] == pytest.approx(notes["table_ratio"] * notes["table_error"])
    assert info["achieved_latency"] == notes["measured"]
    assert notes["met"] == (abs(notes["measured"] / target - 1) <= 0.05)


def test_bwcp_refuses_latency_on_a_pre_activation_network() -> None:
    from prunelab.methods import get_method

    task = _task(prunelab.create("densenet40", num_classes=10), 0.5)
    with pytest.raises(ConfigError, match="needs a post-activation network"):
        get_method("bwcp")(target_control=True).run(task)


@pytest.mark.slow  # measures a table of its own (about 20 s)
def test_a_transformers_prediction_sees_its_heads(tmp_path: Path, monkeypatch) -> None:
    """Attention's fused projections and matmuls (outside modules) are in the prediction."""
    from prunelab.graph.cost import cost_model
    from tests.test_transformers import tiny_vit

    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = tiny_vit().eval()
    graph = prunelab.trace(model, torch.zeros(1, 3, 32, 32))
    table = latency_table(model, graph, SPEC)
    assert table.ms_per_mac > 0
    heads = [g for g in graph.prunable if g.name.endswith("self_attention")]
    keep = {g.index: np.arange(g.size) < g.size // 2 for g in heads}  # half the heads
    cm = cost_model(graph)
    c_out, c_in = cm.layer_widths(keep)
    fewer = cm.product_macs(keep)
    assert 0 < fewer < cm.product_macs({})  # pruning heads removes attention MACs
    blind = table.predict_widths(c_out, c_in)  # the layers alone
    expected = blind + table.coef[0] * table.ms_per_mac * fewer
    assert table.predict(graph, keep) == pytest.approx(expected)
    # the dense linear layers' own rate: their table ms over their MACs
    linear = [n for n in table.layers if isinstance(model.get_submodule(n), nn.Linear)]
    rows = [table.layers.index(n) for n in linear]
    ms = table.layer_ms(table.grid_out[:, -1], table.grid_in[:, -1])[rows].sum()
    macs = sum(graph.layers[n].out_spatial * graph.layers[n].kernel
               * int(np.prod(graph.layers[n].weight_shape[:2])) for n in linear)  # fmt: skip
    assert table.ms_per_mac == pytest.approx(ms / macs)


# mobilenet_v2 at batch 1, 2 threads (bench/results/runtime_speed.json): the table's first
# plan ran slower than it predicted, the next one as predicted, the third slower again.
MOBILENET_B1 = [{"predicted": 0.509, "measured": 0.628}, {"predicted": 0.408, "measured": 0.407},
                {"predicted": 0.447, "measured": 0.567}]  # fmt: skip


def test_an_aim_divides_out_the_error_until_timings_bracket_the_target() -> None:
    first = MOBILENET_B1[:1]
    assert lt.next_aim(first, 0.5) == pytest.approx(0.5 / (0.628 / 0.509))
    assert lt.next_aim([{"predicted": 0.2, "measured": 0.1}], 0.5) == 1.0  # never above dense
    # Both sides tried: the aim interpolates in the tightest bracket (0.407 below, 0.567 above)
    # instead of dividing by the median error, which returns to the 0.408 already tried.
    aim = lt.next_aim(MOBILENET_B1, 0.5)
    assert aim == pytest.approx(0.408 + (0.5 - 0.407) / (0.567 - 0.407) * (0.447 - 0.408))
    assert 0.408 < aim < 0.447
    median_rule = 0.5 / float(np.median([t["measured"] / t["predicted"] for t in MOBILENET_B1]))
    assert median_rule == pytest.approx(0.408, abs=0.005)


def test_a_plan_is_nudged_across_a_kink_in_latency(tiny_table, monkeypatch) -> None:
    """Latency as predicted below a width, 4x steeper above it (a kernel switch): dividing
    by the median error alternates between an aim below the kink and the first aim."""
    model, graph, table, _ = tiny_table
    dense = table.dense_ms(graph)
    target = _reachable(graph, table, 0.5)
    kink = target * 0.85

    def law(predicted: float) -> float:
        return predicted if predicted <= kink else kink + 4 * (predicted - kink)

    def fake_ratio(dense_model, pruned, x, spec, spread=None):
        predicted = table.predict(prunelab.trace(pruned, x)) / dense
        stats = LatencyStats(1.0, 1.0, 1.0, 1.0, spec.repeats, spec.threads)
        return law(predicted), lt.RatioTiming({"dense": stats, "pruned": stats}, 0.0, 1, True)

    monkeypatch.setattr(prunelab.planners, "measured_ratio", fake_ratio)
    plan = prunelab.planners.for_cost(model, graph, target, metric="latency", latency=table,
                                      tolerance=0.01, max_nudges=4)  # fmt: skip
    attempts = plan.notes["latency"]["attempts"]
    assert attempts[0]["aim"] == target and attempts[0]["measured"] > target * 1.05
    for i in range(1, len(attempts)):
        assert attempts[i]["aim"] == pytest.approx(lt.next_aim(attempts[:i], target))
    aims = [round(a["aim"], 4) for a in attempts]
    assert len(set(aims)) == len(aims)  # no aim is tried twice
    assert plan.notes["latency"]["met"]


def test_closest_attempt_picks_the_nearest_timing_and_drops_the_artefact():
    tried = [{"aim": 0.5, "predicted": 0.5, "measured": 0.62, "plan": "a"},
             {"aim": 0.4, "predicted": 0.41, "measured": 0.47, "plan": "b"},
             {"aim": 0.45, "predicted": 0.44, "measured": 0.54, "plan": "c"}]  # fmt: skip
    best, notes = lt.closest_attempt(tried, 0.5, 0.05, artefact="plan")
    assert best["plan"] == "b"  # 6% under beats 8% over and 24% over
    assert notes["measured"] == best["measured"] and notes["predicted"] == 0.41
    assert notes["met"] is False  # 6% off against a 5% tolerance
    assert [a["aim"] for a in notes["attempts"]] == [0.5, 0.4, 0.45]
    assert all("plan" not in a for a in notes["attempts"])
    _, loose = lt.closest_attempt(tried, 0.5, 0.07, artefact="plan")
    assert loose["met"] is True
