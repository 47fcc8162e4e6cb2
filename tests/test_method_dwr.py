"""DWR: the accuracy model, its constrained maximiser, DBP, and the method end to end."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import prunelab
from prunelab.data import build_data
from prunelab.errors import ConfigError
from prunelab.methods import PruneTask, get_method
from prunelab.methods.dwr import Collector
from prunelab.methods.dwr_model import (
    constraint_grid,
    fit_full,
    fit_separable,
    leave_one_out,
    maximize,
    rmse,
)
from prunelab.methods.dwr_probe import dbp_importance
from prunelab.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the MAP
def _separable(p: np.ndarray) -> np.ndarray:
    d, w, r = p[:, 0], p[:, 1], p[:, 2]
    return (0.2 + 0.9 * d - 0.3 * d**2) * (0.3 + 0.5 * w + 0.2 * w**3) * (1.2 - 0.6 * (1 - r) ** 2)


def _axis_points(target: float, rounds: int = 4) -> np.ndarray:
    """What data collection yields: the origin and points along each axis."""
    pts = [[1.0, 1.0, 1.0]]
    for j, lo in enumerate([target, math.sqrt(target), math.sqrt(target)]):
        for v in np.linspace(1.0, lo, rounds + 1)[1:]:
            p = [1.0, 1.0, 1.0]
            p[j] = v
            pts.append(p)
    return np.array(pts)


def test_map_recovers_a_separable_function_from_noisy_samples() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.4, 1.0, size=(60, 3))
    y = _separable(x) + rng.normal(0.0, 0.002, size=60)
    model = fit_separable(x, y, degree=3, rank=1)
    fresh = rng.uniform(0.4, 1.0, size=(500, 3))
    assert np.max(np.abs(model(fresh) - _separable(fresh))) < 0.01
    assert rmse(model, x, y) < 0.004  # about the noise level


def test_rank1_map_generalises_off_axis_from_axis_data_unlike_the_full_polynomial() -> None:
    rng = np.random.default_rng(1)
    x = _axis_points(0.5)
    y = _separable(x) + rng.normal(0.0, 0.001, size=len(x))
    off_axis = rng.uniform(0.75, 1.0, size=(300, 3))
    sep = fit_separable(x, y, degree=3)
    full = fit_full(x, y, degree=3)
    sep_err = rmse(sep, off_axis, _separable(off_axis))
    assert sep_err < 0.01
    assert sep_err < rmse(full, off_axis, _separable(off_axis))
    assert len(leave_one_out(lambda a, b: fit_separable(a, b, 2), x, y)) == len(x)


def test_rank2_model_fits_a_sum_of_two_products() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(0.4, 1.0, size=(80, 3))
    y = x[:, 0] * x[:, 1] ** 2 + 0.5 * (1 - x[:, 1]) * x[:, 2]
    assert rmse(fit_separable(x, y, degree=2, rank=2, restarts=6), x, y) < 1e-3
    assert rmse(fit_separable(x, y, degree=2, rank=1), x, y) > 1e-3


def _bowl(p: np.ndarray) -> np.ndarray:
    return -((p[:, 0] - 0.8) ** 2) - 2 * (p[:, 1] - 0.85) ** 2 - (p[:, 2] - 0.95) ** 2


def test_optimum_satisfies_the_constraint_and_beats_every_grid_point() -> None:
    target = 0.5
    opt = maximize(_bowl, target)
    d, w, r = opt.point
    assert d * w**2 * r**2 == pytest.approx(target, rel=1e-9)
    assert all(0 < v <= 1 for v in opt.point)
    # An independent grid over (d, w) with r solved from the constraint.
    dd, ww = np.meshgrid(np.linspace(target, 1, 600), np.linspace(math.sqrt(target), 1, 600))
    rr = np.sqrt(target / (dd * ww**2))
    ok = rr <= 1
    grid = np.stack([dd[ok], ww[ok], rr[ok]], axis=1)
    assert opt.value >= _bowl(grid).max() - 1e-12
    assert opt.value == pytest.approx(float(_bowl(np.array([opt.point]))[0]))


def test_optimum_with_some_dimensions_fixed() -> None:
    opt = maximize(_bowl, 0.5, free=("width", "resolution"))
    d, w, r = opt.point
    assert d == 1.0 and w**2 * r**2 == pytest.approx(0.5)
    assert opt.value >= _bowl(constraint_grid(0.5, ("width", "resolution"), 5000)).max() - 1e-12
    single = maximize(_bowl, 0.5, free=("depth",))
    assert single.point == (0.5, 1.0, 1.0)


# ---------------------------------------------------------------------- DBP
class AddBlock(nn.Module):
    """x + conv_b(relu(conv_a(x))), all 1x1: a residual block with an identity shortcut."""

    def __init__(self, reads: tuple[int, int] | None, writes: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(6, 2, 1)
        self.relu = nn.ReLU()
        self.conv_b = nn.Conv2d(2, 6, 1)
        with torch.no_grad():
            for conv in (self.conv_a, self.conv_b):
                conv.weight.zero_()
                conv.bias.zero_()
            if reads is not None:  # writes [s == t] (an XOR) into channel `writes`
                a, b = reads
                self.conv_a.weight[0, [a, b]] = 1.0
                self.conv_a.weight[1, [a, b]] = -1.0
                self.conv_a.bias.fill_(-1.0)
                self.conv_b.weight[writes, :] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_b(self.relu(self.conv_a(x)))


def _xor_batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Channels 0-3 hold signs s1, t1, s2, t2; class = 2 [s1 == t1] + [s2 == t2]."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n, 4), generator=g).float() * 2 - 1
    x = torch.zeros(n, 6, 2, 2)
    x[:, :4] = (signs + 0.1 * torch.randn(n, 4, generator=g))[:, :, None, None]
    y = 2 * (signs[:, 0] == signs[:, 1]).long() + (signs[:, 2] == signs[:, 3]).long()
    return [(x[i : i + 100], y[i : i + 100]) for i in range(0, n, 100)]


def test_dbp_ranks_a_block_that_adds_nothing_least_important() -> None:
    net = nn.Sequential(
        AddBlock((0, 1), 4), AddBlock(None, 4), AddBlock((2, 3), 5), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(6, 4),
    )  # fmt: skip
    blocks = [b.name for b in prunelab.graph.blocks.find_removable_blocks(net)]
    assert blocks == ["0", "1", "2"]
    gains = dbp_importance(net, blocks, _xor_batches(800, 0), _xor_batches(800, 1), 4)
    assert gains["1"] == 0.0  # the features do not change at all
    assert gains["0"] > 15 and gains["2"] > 15  # each XOR feature adds about 25-50 points
    assert min(gains, key=gains.get) == "1"


# ---------------------------------------------------------------- end to end
def _data():
    return build_data(
        "synthetic", batch_size=16, n_train=96, n_test=32, holdout=32, image_size=16, seed=0
    )


def _task(tmp_path=None, model=None, **train):
    data = _data()
    torch.manual_seed(0)
    model = model or prunelab.create("resnet20", num_classes=data.num_classes, widths=(4, 8, 8))
    config = TrainConfig(epochs=1, steps_per_epoch=2, lr=0.02, quiet=True, **train)
    return PruneTask(model=model, data=data, target=0.5, train=config, run_dir=tmp_path,
                     quiet=True)  # fmt: skip


FAST = {"rounds": 2, "round_epochs": 1, "final_epochs": 1, "probe_batches": 2}


@pytest.fixture(scope="module")
def three_d(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dwr")
    task = _task(run_dir)
    base = prunelab.count(task.model, torch.zeros(1, 3, 16, 16))
    result = get_method("dwr")(**FAST).run(task)
    return task, base, result, run_dir


def test_three_d_run_collects_points_and_meets_the_budget(three_d) -> None:
    _, base, result, _ = three_d
    info = result.info
    points = info["points"]
    assert [p["dim"] for p in points] == ["origin"] + ["depth"] * 2 + ["width"] * 2 + [
        "resolution"
    ] * 2
    for p in points:  # each round moves along its own dimension only
        moved = {"depth": "d", "width": "w", "resolution": "r"}.get(p["dim"])
        assert all(p[k] == 1.0 for k in "dwr" if k != moved)
        if moved:
            assert p[moved] < 1.0
    # Each dimension is collected down to where it alone costs T by the measured cost model.
    ends = info["collection_ends"]
    steps = {dim: [1 - n * (1 - ends[dim]) / 2 for n in (1, 2)] for dim in ends}
    assert [p["blocks_kept"] for p in points[1:3]] == [round(v * 7) for v in steps["depth"]]
    assert [p["pixels"] for p in points[5:7]] == [round(v * 16) for v in steps["resolution"]]
    # Depth alone reaches 0.5 only well below d = 0.5: the stem, the downsampling blocks
    # and the classifier do not shrink with d.
    assert ends["depth"] < 0.47 and 0.65 < ends["width"] < 0.75
    opt = info["optimum"]
    assert opt["cost"] == pytest.approx(0.5, rel=1e-6)
    lowest = {k: min(p[k] for p in points) for k in "dwr"}  # the optimum stays in the data
    assert all(lowest[k] - 1e-9 <= opt[k] <= 1.0 for k in "dwr")
    assert info["collection"]["models_finetuned"] == 7  # the retrained origin is a round too
    # The engine's count of the final model at its recorded resolution meets T within 3%.
    size = result.model.prunelab_input_size
    flops = prunelab.count(result.model, torch.zeros(1, *size)).flops
    assert abs(flops / base.flops - 0.5) <= 0.03 * 0.5
    assert info["within_tolerance"] and info["achieved_flops"] == pytest.approx(flops / base.flops)
    chosen = info["chosen"]
    assert size == (3, chosen["pixels"], chosen["pixels"])
    kept = 7 - sum(isinstance(m, nn.Identity) for m in result.model.modules())
    assert chosen["blocks_kept"] == kept and len(info["removed_blocks"]) == 7 - kept


def test_pruned_model_saves_with_its_resolution(three_d, tmp_path) -> None:
    _, _, result, _ = three_d
    prunelab.save(result.model, tmp_path / "m.pt")
    back = prunelab.load(tmp_path / "m.pt")
    assert back.prunelab_input_size == result.model.prunelab_input_size
    x = torch.randn(2, *back.prunelab_input_size)
    torch.testing.assert_close(back(x), result.model.eval()(x))


def test_collected_points_are_reused_from_the_cache(three_d, monkeypatch) -> None:
    task, _, first, run_dir = three_d
    calls = []
    original = Collector.finetune

    def counting(self, *args, **kwargs):
        calls.append(args[2])  # epochs
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Collector, "finetune", counting)
    task = _task(run_dir)
    again = get_method("dwr")(**FAST).run(task)
    assert calls == [1]  # only the final fine-tune ran
    assert again.info["points"] == first.info["points"]
    with pytest.raises(ConfigError, match="other settings"):
        get_method("dwr")(**{**FAST, "round_epochs": 2}).run(_task(run_dir))


def test_collection_leaves_the_trained_model_untouched() -> None:
    # resolution rounds prune nothing before fine-tuning: they must train a copy
    task = _task()
    col = Collector(task, get_method("dwr")(rounds=1, round_epochs=1, probe_batches=2).options)
    before = {k: v.clone() for k, v in col.model0.state_dict().items()}
    for dim in ("resolution", "width", "depth"):
        col.dimension(dim)
    after = col.model0.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_dbp_probes_see_every_class_in_both_halves_of_a_class_sorted_split(monkeypatch) -> None:
    # an image folder's hold-out is sorted by class: in its own order the probes were fitted
    # on the first classes and scored on the others (probe_order "split", kept selectable)
    from prunelab.methods import dwr as dwr_module

    data = build_data("synthetic", batch_size=16, n_train=128, n_test=16, holdout=64,
                      image_size=16, num_classes=4, seed=0)  # fmt: skip
    hold = data.holdout
    hold.indices = hold.indices[hold.labels[hold.indices].argsort(stable=True)]
    torch.manual_seed(0)
    model = prunelab.create("resnet20", num_classes=4, widths=(4, 8, 8))
    task = PruneTask(model=model, data=data, target=0.5, quiet=True,
                     train=TrainConfig(epochs=1, steps_per_epoch=2, quiet=True))  # fmt: skip
    seen = {}

    def capture(model, blocks, fit, score, num_classes):
        seen["fit"] = set(torch.cat([y for _, y in fit]).tolist())
        seen["score"] = set(torch.cat([y for _, y in score]).tolist())
        return {b: 0.0 for b in blocks}

    monkeypatch.setattr(dwr_module, "dbp_importance", capture)
    for order in ("random", "split"):
        col = Collector(task, get_method("dwr")(**{**FAST, "probe_batches": 4},
                                                probe_order=order).options)  # fmt: skip
        col.dbp(col.model0, col.blocks0)
        if order == "random":
            assert seen["fit"] == seen["score"] == {0, 1, 2, 3}
        else:
            assert max(seen["fit"]) <= min(seen["score"])  # first classes fit, last scored
    with pytest.raises(ConfigError, match="probe_order"):
        get_method("dwr")(**FAST, probe_order="sorted").run(_task())


def test_round_steps_shortens_the_collection_rounds_only(monkeypatch) -> None:
    from prunelab.methods import dwr as dwr_module

    seen = []
    original = dwr_module.fit

    def recording(task, model, subdir, **changes):
        seen.append((subdir, changes.get("steps_per_epoch")))
        return original(task, model, subdir, **changes)

    monkeypatch.setattr(dwr_module, "fit", recording)
    options = get_method("dwr")(rounds=1, round_epochs=1, round_steps=1, probe_batches=2).options
    col = Collector(_task(), options)
    col.dimension("width")
    assert seen == [("collect/width_1", 1)]
    assert col.settings()["round_steps"] == 1  # a cache of full rounds is refused
    assert "round_steps" not in Collector(_task(), get_method("dwr")(**FAST).options).settings()
    with pytest.raises(ConfigError, match="round_steps"):
        get_method("dwr")(round_steps=0).run(_task())


def test_points_collected_without_distillation_are_refused_by_a_distilled_run(three_d) -> None:
    _, _, _, run_dir = three_d  # its cache was collected without distillation
    kd = {"teacher": "dense", "weight": 0.9, "temperature": 4.0}
    distilled = Collector(_task(distill=kd), get_method("dwr")(**FAST).options).settings()
    assert distilled["distill"] == kd
    assert "distill" not in Collector(_task(), get_method("dwr")(**FAST).options).settings()
    with pytest.raises(ConfigError, match="other settings"):
        get_method("dwr")(**FAST).run(_task(run_dir, distill=kd))


def test_origin_is_retrained_like_every_point_or_taken_as_is(three_d, monkeypatch) -> None:
    _, _, first, run_dir = three_d
    origin = first.info["points"][0]
    assert origin["dim"] == "origin" and origin["epochs"] == 1 and origin["test_top1"] is not None
    plain = _task()
    as_is = Collector(plain, get_method("dwr")(**FAST, origin="checkpoint").options).origin()
    assert as_is.epochs == 0 and as_is.test_top1 is None
    assert as_is.accuracy == pytest.approx(Collector(plain, get_method("dwr")(**FAST).options)
                                           .evaluate(plain.model, 16))  # fmt: skip
    # the paper's origin reuses every collected round of the retrained run's cache
    calls = []
    original = Collector.finetune
    monkeypatch.setattr(Collector, "finetune",
                        lambda self, *a, **k: calls.append(a[2]) or original(self, *a, **k))
    paper = get_method("dwr")(**FAST, origin="checkpoint").run(_task(run_dir))
    assert calls == [1]  # the final fine-tune only
    assert paper.info["points"][1:] == first.info["points"][1:]
    assert paper.info["points"][0]["epochs"] == 0
    with pytest.raises(ConfigError, match="origin must be"):
        get_method("dwr")(origin="trained").run(_task())


def test_resolution_reaches_training_and_evaluation() -> None:
    task = _task()
    seen: list[tuple[bool, int]] = []

    def record(module: nn.Module, args: tuple) -> None:
        if args[0].shape[0] > 1:  # batches, not the cost counter's single image
            seen.append((module.training, args[0].shape[-1]))

    task.model.conv1.register_forward_pre_hook(record)  # travels with the model's copies
    result = get_method("dwr")(dims=["resolution"], final_epochs=1).run(task)
    pixels = result.info["chosen"]["pixels"]
    assert pixels < 16 and result.model.prunelab_input_size == (3, pixels, pixels)
    assert {training for training, _ in seen} == {True, False}  # trained and evaluated
    assert {size for _, size in seen} == {pixels}
    assert task.data.effective_input_size == (3, 16, 16)  # the data is restored afterwards
    assert abs(result.info["achieved_flops"] - 0.5) < 0.1  # closest side length to the budget


def test_depth_only_removes_blocks_by_dbp_and_width_only_meets_the_budget() -> None:
    depth = get_method("dwr")(dims=["depth"], final_epochs=0, probe_batches=2).run(_task())
    removed = depth.info["removed_blocks"]
    order = sorted(depth.info["dbp_gain"], key=lambda b: depth.info["dbp_gain"][b])
    assert removed and set(removed) == set(order[: len(removed)])
    assert depth.info["chosen"]["w"] == 1.0 and depth.info["chosen"]["r"] == 1.0
    width = get_method("dwr")(dims=["width"], final_epochs=0).run(_task())
    assert width.info["within_tolerance"] and width.info["chosen"]["w"] < 1.0
    assert width.info["chosen"]["d"] == 1.0 and width.info["removed_blocks"] == []


def test_bad_requests_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="metric=flops"):
        get_method("dwr")().run(PruneTask(**{**_task().__dict__, "metric": "params"}))
    with pytest.raises(ConfigError, match="dims"):
        get_method("dwr")(dims=["depth", "height"]).run(_task())
    plain = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="no removable depth units"):
        get_method("dwr")(**FAST).run(_task(model=plain))
    with pytest.raises(ConfigError, match="no option"):
        get_method("dwr")(epochs_per_round=3)


# ------------------------------------------------------------- under torchrun
def _ddp_rank(out: str) -> None:
    """One rank of the 2-process run: the whole method, then this rank's decisions."""
    from prunelab.train import distributed as D

    ctx = D.init_distributed()
    torch.set_num_threads(1)
    task = _task(Path(out) / "run")
    result = get_method("dwr")(dims=["depth", "resolution"], rounds=1, round_epochs=1,
                               final_epochs=1, probe_batches=2).run(task)  # fmt: skip
    info = result.info
    keep = {k: info[k] for k in ("optimum", "chosen", "removed_blocks", "dbp_gain")}
    keep["points"] = [{k: v for k, v in p.items() if k != "seconds"} for p in info["points"]]
    torch.save({"info": keep, "state": result.model.state_dict()}, Path(out) / f"r{ctx.rank}.pt")


@pytest.mark.slow
def test_ranks_agree_under_torchrun(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.test_method_dwr", str(tmp_path)]  # fmt: skip
    run = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r0 = torch.load(tmp_path / "r0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "r1.pt", weights_only=False)
    assert r0["info"] == r1["info"]  # same points, optimum and blocks on every rank
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert sorted(p.name for p in (tmp_path / "run" / "collect").glob("*.json")) == [
        "depth_1.json",
        "origin_retrained.json",
        "resolution_1.json",
    ]


def test_resolution_is_collected_to_the_smallest_measured_side_when_it_cannot_reach_t() -> None:
    # at 10% FLOPs resolution alone would need r of about 0.32, below the cost model's 0.5
    task = _task()
    task.target = 0.1
    col = Collector(task, get_method("dwr")(**FAST).options)
    assert col.cost_model()(np.array([[1.0, 1.0, 0.5]]))[0] > 0.1
    assert col.lowest("resolution") == pytest.approx(0.5)
    assert col.schedule("resolution") == [12, 8]  # of 16 px, in FAST's two rounds


if __name__ == "__main__":  # a rank of test_ranks_agree_under_torchrun
    _ddp_rank(sys.argv[1])

