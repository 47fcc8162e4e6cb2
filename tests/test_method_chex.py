"""CHEX: CSS leverage, regrow scores, delta schedule, allocation, weight restore, surgery."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import torch

import prunelab
from prunelab.cli.config import build_config
from prunelab.data import build_data
from prunelab.errors import ConfigError, InfeasibleBudgetError
from prunelab.graph.cost import base_cost, cost_of_masks
from prunelab.methods import chex_selection as sel
from prunelab.methods.base import PruneTask, get_method
from prunelab.methods.chex import ChexCallback, ChexOptions, surgery
from prunelab.train import Callback, TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n_train: int = 64):
    return build_data("synthetic", batch_size=16, n_train=n_train, n_test=32, seed=0)


def _config(epochs: int = 4, steps: int = 2, **kw) -> TrainConfig:
    base = {"epochs": epochs, "steps_per_epoch": steps, "lr": 0.05, "quiet": True, "seed": 0}
    return TrainConfig(**{**base, **kw})


def _setup(name: str = "resnet20", target: float = 0.5, **opts):
    """A fresh model with distinct BN scales (no ties in the pooled |gamma|), graph, callback."""
    torch.manual_seed(0)
    model = prunelab.create(name, num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
    graph = prunelab.trace(model.eval(), torch.zeros(1, 3, 32, 32))
    cb = ChexCallback(graph, target, "flops", ChexOptions(**{"interval": 1, **opts}), seed=0)
    cb.initial = copy.deepcopy(model.state_dict())
    return model, graph, cb


# ------------------------------------------------------------------ the maths


def test_leverage_scores_single_out_independent_columns_and_split_duplicates():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    c = torch.zeros(8)
    c[7] = 1.0
    a[7] = b[7] = 0.0  # c is orthogonal to a and b
    # columns: a, b, a + b (in span of a, b), c (outside), a again (duplicate of column 0)
    x = torch.stack([a, b, a + b, c, a], dim=1)
    lev = sel.leverage_scores(x, k=3)
    assert lev[3] == pytest.approx(1.0, abs=1e-9)  # outside the span: full leverage
    assert lev[3] == lev.max()
    assert lev[0] == pytest.approx(lev[4].item(), abs=1e-12)  # duplicates share equally
    # a column alone in its direction has leverage 1; the duplicated pair splits it
    y = torch.stack([a, a, c], dim=1)
    lev_y = sel.leverage_scores(y, k=2)
    assert lev_y[0] ** 2 + lev_y[1] ** 2 == pytest.approx(1.0, abs=1e-9)
    assert lev_y[0] == pytest.approx(1 / math.sqrt(2), abs=1e-9)
    # fewer rows than columns: css falls back to the column l1 norm
    wide = torch.randn(2, 5, generator=gen)
    assert torch.allclose(sel.css_scores(wide, 2), wide.abs().sum(0).double())


def test_orthogonality_is_distance_to_the_kept_span():
    kept = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    cand = torch.tensor([[3.0, 1.0], [4.0, 0.0], [0.0, 2.0]])
    eps = sel.orthogonality(kept, cand)
    assert eps.tolist() == pytest.approx([0.0, 2.0])
    assert sel.orthogonality(torch.zeros(3, 0), cand).tolist() == pytest.approx([5.0, math.sqrt(5)])


def test_regrow_sampling_topk_and_without_replacement():
    eps = torch.tensor([0.1, 5.0, 0.2, 4.0, 0.3])
    assert sorted(sel.sample_regrow(eps, 2, deterministic=True).tolist()) == [1, 3]
    gen = torch.Generator().manual_seed(0)
    pick = sel.sample_regrow(eps, 4, generator=gen)
    assert len(set(pick.tolist())) == 4
    # softmax probabilities: high-eps candidates are drawn far more often
    hits = torch.zeros(5)
    for s in range(200):
        hits[sel.sample_regrow(eps, 1, generator=torch.Generator().manual_seed(s))] += 1
    assert hits[1] > hits[0] + hits[2] + hits[4]


def test_cosine_delta_schedule_and_update_times():
    assert sel.delta_at(0, 10, 0.3) == pytest.approx(0.3)
    assert sel.delta_at(5, 10, 0.3) == pytest.approx(0.15)
    assert sel.delta_at(10, 10, 0.3) == 0.0 and sel.delta_at(12, 10, 0.3) == 0.0
    values = [sel.delta_at(t, 10, 0.3) for t in range(11)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # decays monotonically
    assert sel.delta_at(2.5, 10, 0.3) == pytest.approx(0.3 * (1 + math.cos(math.pi / 4)) / 2)
    assert sel.update_times(2, 11) == [2, 4, 6, 8, 10, 11]
    assert sel.update_times(2, 180)[-2:] == [178, 180]


def test_allocation_is_a_global_quantile_of_pooled_scores():
    scores = [torch.tensor([0.1, 0.9, 0.5]), torch.tensor([0.2, 0.3, 0.8, 0.05])]
    alloc = sel.Allocation(scores)
    pooled = torch.cat(scores).sort().values
    for n in range(1, 7):
        thr = pooled[n - 1]  # units at or below the global n/7 quantile go
        expect = [int((s > thr).sum()) for s in scores]
        assert alloc.counts(n).tolist() == [max(1, e) for e in expect]
    assert alloc.counts(7).tolist() == [1, 1]  # a layer never loses every channel
    masks = alloc.masks(torch.tensor([1, 2]))
    assert masks[0].tolist() == [False, True, False]
    assert masks[1].tolist() == [False, True, True, False]


# ------------------------------------------------------------ the callback


class _Spy(Callback):
    """Snapshots of the model, masks and optimizer state around the CHEX callback."""

    def __init__(self, cb: ChexCallback) -> None:
        self.cb = cb
        self.snaps: list[dict] = []
        self.violations = 0
        self.steps = 0

    def snap(self, trainer: Trainer) -> dict:
        return {
            "epoch": trainer.epoch,
            "state": copy.deepcopy(trainer.model.state_dict()),
            "masks": {g: m.clone() for g, m in self.cb.mask.masks.items()},
            "momentum": {
                n: trainer.optimizer.state[p]["momentum_buffer"].clone()
                for n, p in trainer.model.named_parameters()
                if "momentum_buffer" in trainer.optimizer.state.get(p, {})
            },
        }


class _Before(_Spy):
    def on_epoch_start(self, trainer, epoch):
        self.snaps.append(self.snap(trainer))

    def on_step_end(self, trainer):
        # runs before CHEX re-applies the mask: masked weights must not have moved at all
        self.steps += 1
        for g, keep in self.cb.mask.masks.items():
            for m in self.cb.graph.groups[g].members:
                if m.param.startswith("running_"):
                    continue
                t = getattr(trainer.model.get_submodule(m.module), m.param)
                pos = m.positions_of(~keep)
                if t.detach().index_select(m.dim, pos).abs().sum() != 0:
                    self.violations += 1


class _After(_Spy):
    def on_epoch_start(self, trainer, epoch):
        self.snaps.append(self.snap(trainer))


def _slice(state: dict, m, units: torch.Tensor) -> torch.Tensor:
    t = state[f"{m.module}.{m.param}"]
    return t.index_select(m.dim, m.positions[torch.isin(m.units, units)])


def test_training_regrows_with_saved_weights_and_masked_weights_never_move():
    model, graph, cb = _setup(delta0=0.4)
    before, after = _Before(cb), _After(cb)
    config = _config(epochs=5, steps=2, momentum=0.9, weight_decay=5e-4)
    Trainer(model, _data(), config, callbacks=[before, cb, after]).fit()
    assert before.steps == 10 and before.violations == 0
    revived_units = 0
    for i in range(1, len(before.snaps)):
        pre, post = before.snaps[i], after.snaps[i]
        for g, new in post["masks"].items():
            old = pre["masks"][g]
            revived = torch.nonzero(new & ~old).flatten()
            for u in revived.tolist():
                # u's weights just before the update that pruned it (initial ones if it
                # was masked from the start)
                alive_at = [k for k in range(i) if after.snaps[k]["masks"][g][u]]
                if alive_at:
                    j = alive_at[-1] + 1
                    assert before.snaps[j]["masks"][g][u] and not after.snaps[j]["masks"][g][u]
                    pruned_state = before.snaps[j]["state"]
                else:
                    pruned_state = cb.initial
                for m in graph.groups[g].members:
                    want = _slice(pruned_state, m, torch.tensor([u]))
                    got = _slice(post["state"], m, torch.tensor([u]))
                    assert torch.equal(want, got), (m.module, m.param, u)
                    name = f"{m.module}.{m.param}"
                    if name in post["momentum"]:
                        assert _slice(post["momentum"], m, torch.tensor([u])).abs().sum() == 0
                revived_units += 1
    assert revived_units > 0  # the scenario did exercise regrowing


def test_alive_counts_follow_the_allocation_and_meet_the_flops_target():
    model, graph, cb = _setup(delta0=0.3)
    before = _Before(cb)
    Trainer(model, _data(), _config(epochs=5, steps=2), callbacks=[before, cb]).fit()
    base = base_cost(graph).flops
    events = cb.timeline[1:]
    assert [e["t"] for e in events] == cb.times == [1, 2, 3, 4]  # t_max = round(0.72 * 5)
    for e in events:
        snap = before.snaps[e["t"]]
        # the pooled |gamma| the allocation saw: alive units now, pruned units at their last value
        gammas = []
        for g in cb.groups:
            grp = graph.groups[g]
            (bn,) = grp.norms
            now = snap["state"][f"{bn}.weight"].abs().double()
            last = _last_gamma(before, g, bn, e["t"])
            gammas.append(torch.where(snap["masks"][g], now, last))
        n_total = sum(len(gm) for gm in gammas)
        n_pruned = round(e["kappa"] * n_total)  # kept architecture: sparsity kappa ...
        keep = torch.tensor(e["keep"])
        extra = keep - torch.tensor(
            _quantile_counts(gammas, n_pruned)
        )  # ... plus a few units back, to
        assert (extra >= 0).all() and extra.sum() <= 8  # land within 1% of the target
        n_gone = n_pruned - round(e["delta"] * n_total)  # alive: sparsity kappa - delta
        assert (
            e["alive"]
            == torch.maximum(torch.tensor(_quantile_counts(gammas, n_gone)), keep).tolist()
        )
        assert e["pruned_cost"] == pytest.approx(0.5, rel=0.01)
    final = {g: cb.mask.masks[g] for g in cb.groups}
    assert cost_of_masks(graph, final).flops / base == pytest.approx(0.5, rel=0.01)


def _quantile_counts(gammas: list, n: int) -> list:
    """Units of each layer not among the n lowest pooled |gamma| (ties: earlier layer first)."""
    pooled = torch.cat(gammas)
    owner = torch.cat([torch.full((len(gm),), i) for i, gm in enumerate(gammas)])
    gone = owner[torch.sort(pooled, stable=True).indices[: max(n, 0)]]
    return [max(1, len(gm) - int((gone == i).sum())) for i, gm in enumerate(gammas)]


def _last_gamma(spy: _Before, g: int, bn: str, upto: int) -> torch.Tensor:
    """Each unit's |gamma| at the last epoch start (up to update `upto`) where it was alive;
    0 for units never alive."""
    out = torch.zeros_like(spy.snaps[0]["state"][f"{bn}.weight"], dtype=torch.float64)
    for k in range(upto + 1):
        alive = spy.snaps[k]["masks"][g]
        out = torch.where(alive, spy.snaps[k]["state"][f"{bn}.weight"].abs().double(), out)
    return out


def test_gradual_pruning_never_regrows():
    model, _, cb = _setup(regrow="none", delta0=0.3)
    after = _After(cb)
    Trainer(model, _data(), _config(epochs=5, steps=1), callbacks=[cb, after]).fit()
    for a, b in zip(after.snaps, after.snaps[1:], strict=False):
        for g in cb.groups:
            assert not (b["masks"][g] & ~a["masks"][g]).any()
    assert cb.timeline[-1]["alive_flops"] == pytest.approx(0.5, abs=0.005)


def test_method_run_prunes_physically_within_two_percent_and_matches_masked_outputs(tmp_path):
    torch.manual_seed(0)
    data = _data()
    model = prunelab.create("resnet20", num_classes=10)
    task = PruneTask(model, data, target=0.5, train=_config(epochs=3, steps=2), run_dir=tmp_path)
    result = get_method("chex")(interval=1, regrow="topk").run(task)
    x = torch.zeros(1, 3, 32, 32)
    dense = prunelab.count(prunelab.create("resnet20", num_classes=10), x).flops
    assert prunelab.count(result.model, x).flops / dense == pytest.approx(0.5, abs=0.01)
    assert result.info["achieved_flops"] == pytest.approx(0.5, abs=0.01)
    assert result.info["masked_vs_pruned_max_diff"] < 1e-4
    assert all(0 < k <= s for k, s in zip(result.info["kept"], result.info["sizes"], strict=True))
    assert "chex_alive" in result.history[-1] and len(result.history) == 3
    assert 0.5 < result.info["train_flops_ratio"] < 1.0
    assert set(result.info["left_whole"]) == {"conv1", "layer2.0.downsample.0",
                                              "layer3.0.downsample.0"}  # fmt: skip


def test_surgery_preserves_eval_outputs_with_shortcut_groups_pruned():
    model, graph, cb = _setup(shortcuts=True, delta0=0.3)
    Trainer(model, _data(), _config(epochs=3, steps=2), callbacks=[cb]).fit()
    assert not cb.left_whole and len(cb.groups) == 12
    coupled = [g for g in cb.groups if graph.groups[g].coupled]
    assert coupled and any(cb.mask.alive(g) < graph.groups[g].size for g in coupled)
    model = model.cpu().eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        masked = model(x)
    pruned, _ = surgery(cb, copy.deepcopy(model), x)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked, atol=1e-5)


@pytest.mark.slow
def test_depthwise_groups_of_mobilenet_v2_with_feature_css():
    model, graph, cb = _setup("cifar_mobilenet_v2", target=0.6, delta0=0.2)
    Trainer(model, _data(64), _config(epochs=2, steps=4), callbacks=[cb]).fit()
    assert len(cb.images_for_features) == 64  # gathered over the latest 4 batches of 16
    assert set(cb.css_used) == {graph.groups[g].name for g in cb.groups}
    assert cb.css_used["blocks.1.expand_conv"] == "features"  # a 1x1 expansion
    assert list(cb.css_used.values()).count("l1") <= 1  # the pooled 1280-channel head
    x = torch.randn(4, 3, 32, 32)
    model = model.cpu().eval()
    with torch.no_grad():
        masked = model(x)
    pruned, _ = surgery(cb, model, x)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked, atol=1e-5)
    ratio = prunelab.count(pruned, x[:1]).flops / base_cost(graph).flops
    assert ratio == pytest.approx(0.6, abs=0.012)


def test_state_dict_round_trip():
    model, _, cb = _setup()
    Trainer(model, _data(), _config(epochs=2, steps=1), callbacks=[cb]).fit()
    state = cb.state_dict()
    model2, _, cb2 = _setup()
    trainer = Trainer(model2, _data(), _config(epochs=2, steps=1))
    cb2.on_train_start(trainer)
    cb2.load_state_dict(state)
    assert all(torch.equal(cb2.mask.masks[g], cb.mask.masks[g]) for g in cb.groups)
    assert cb2.done == cb.done and cb2.kappa == cb.kappa
    for k, v in cb.memory.shadow.items():
        assert torch.equal(cb2.memory.shadow[k], v)


def test_resume_from_a_trainer_checkpoint(tmp_path):
    model, _, cb = _setup()
    config = _config(epochs=3, steps=1, run_dir=str(tmp_path))
    Trainer(model, _data(), config, callbacks=[cb]).fit()
    model2, _, cb2 = _setup()
    trainer = Trainer(model2, _data(), config.replace(resume=True), callbacks=[cb2])
    trainer.fit()  # loads the finished run: nothing left to train
    assert trainer.epoch == 3 and cb2.done == cb.done and cb2.timeline == cb.timeline
    assert all(torch.equal(cb2.mask.masks[g], cb.mask.masks[g]) for g in cb.groups)
    assert cb2.training_flops_ratio() == cb.training_flops_ratio()


def test_step_unit_schedule_and_fixed_kappa():
    model, graph, cb = _setup(unit="step", interval=2, kappa=0.5, delta0=0.2)
    Trainer(model, _data(), _config(epochs=2, steps=3), callbacks=[cb]).fit()
    assert cb.t_max == 4 and cb.done == [2, 4]  # round(0.72 * 6 steps)
    assert [e["step"] for e in cb.timeline] == [0, 2, 4]
    total = sum(graph.groups[g].size for g in cb.groups)
    assert sum(cb.timeline[-1]["alive"]) == total - round(0.5 * total)  # channel sparsity 0.5
    assert cb.kappa == pytest.approx(0.5, abs=1 / total)


def test_bad_options_and_budgets_are_clear_errors():
    with pytest.raises(ConfigError, match="regrow"):
        get_method("chex")(regrow="maybe")
    with pytest.raises(ConfigError, match="t_max"):
        get_method("chex")(t_max=1.5)
    with pytest.raises(ConfigError, match="no option"):
        get_method("chex")(kapa=0.5)
    model, _, cb = _setup(target=0.01)  # shortcuts left whole: 1% is out of reach
    with pytest.raises(InfeasibleBudgetError, match="shortcuts"):
        Trainer(model, _data(), _config(epochs=1, steps=1), callbacks=[cb]).fit()


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("chex_*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_ready_configs_are_valid(path):
    cfg = build_config({}, [str(path)], [])
    method = dict(cfg["method"])
    assert method.pop("name") == "chex"
    get_method("chex")(**method)
    train = TrainConfig.from_dict(cfg["train"])
    if "imagenet" in path.stem:  # the paper's recipe, as the shared preset spells it
        preset = TrainConfig.preset("imagenet_chex")
        keys = ("epochs", "lr", "lr_ref_batch", "momentum", "weight_decay", "no_decay_bn_bias",
                "schedule", "warmup_epochs", "label_smoothing")  # fmt: skip
        for key in keys:
            assert getattr(train, key) == getattr(preset, key), key
        assert method["interval"] == 2 and round(method["t_max"] * train.epochs) == 180


def test_there_are_configs_for_every_setting():
    names = {p.stem for p in CONFIGS}
    for want in ("resnet20", "resnet56", "resnet50", "mobilenetv2", "efficientnetb0"):
        assert any(want in n for n in names), want


# ------------------------------------------------ CSS matrices on every layer kind


def _inverted_residual_net():
    """A stem and one MobileNetV2 block (4 -> 24 expanded -> 8 channels), eval mode.

    Expanded channels 1..23 are copies of three base channels (same expansion and
    depthwise filters); channel 0 is its own, with the smallest weights (l1 ranks it last).
    """
    from torchvision.models.mobilenetv2 import InvertedResidual

    torch.manual_seed(0)
    block = InvertedResidual(4, 8, stride=2, expand_ratio=6)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(), block, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()  # fmt: skip
    expand, dw = block.conv[0][0].weight.data, block.conv[1][0].weight.data
    for c in range(1, 24):
        base = 1 + (c - 1) % 3
        expand[c], dw[c] = expand[base], dw[base]
    expand[0] = 0.05 * torch.randn(4, 1, 1).abs()  # positive: passes the ReLU6
    dw[0] = 0.05 * torch.randn(1, 3, 3).abs()
    return net


def test_css_on_a_mobilenet_v2_block_uses_features_and_finds_the_channel_outside_the_span():
    from prunelab.methods import chex_features as feat

    net = _inverted_residual_net()
    x = torch.rand(16, 3, 16, 16)
    graph = prunelab.trace(net, x[:1])
    group = graph.group_of("3.conv.0.0")  # the 24 expanded channels
    assert group.size == 24
    weights = {(m.module, m.param): getattr(net.get_submodule(m.module), m.param)
               for m in group.members}  # fmt: skip
    # the paper's weight matrices are wide here (4 and 9 rows for 24 channels): l1
    mats, used = feat.group_matrices("weights", group, weights, None)
    assert used == "l1" and not any(feat.is_tall(m) for _, m in mats)
    features = feat.capture_inputs(net, feat.consumers(group, net), x, max_rows=4096)
    for source in ("auto", "features"):
        mats, used = feat.group_matrices(source, group, weights, features)
        assert used == "features" and all(feat.is_tall(m) for _, m in mats)  # no fallback
        lev = sel.group_css_scores(mats, group.size, torch.arange(24), k=4)
        assert int(torch.argmax(lev)) == 0  # outside the span of the others: highest
        assert lev[0] == pytest.approx(1.0, abs=1e-6)
        # regrow: against kept copies of the three base channels, only channel 0 adds
        kept = torch.zeros(24, dtype=torch.bool)
        kept[1:4] = True
        cand = torch.nonzero(~kept).flatten()
        eps = sel.group_orthogonality(mats, group.size, kept, cand)
        assert eps[0] > 0 and float(eps[1:].abs().max()) < 1e-6 * float(eps[0])
    l1 = sel.group_css_scores(feat.group_matrices("weights", group, weights, None)[0],
                              group.size, torch.arange(24), k=4)  # fmt: skip
    assert int(torch.argmin(l1)) == 0  # the reference's fallback ranks it last


def test_round_to_keeps_every_group_a_multiple_and_still_meets_the_target():
    # paper: exact per-layer widths; round_to=8 (not in the paper) keeps kernels fast
    model, graph, cb = _setup(delta0=0.3, round_to=8)
    Trainer(model, _data(), _config(epochs=3, steps=1), callbacks=[cb]).fit()
    for e in cb.timeline[1:]:
        assert all(k % 8 == 0 for k in e["keep"]) and all(a % 8 == 0 for a in e["alive"])
    final = {g: cb.mask.masks[g] for g in cb.groups}
    assert all(int(m.sum()) % 8 == 0 and m.any() for m in final.values())
    assert cost_of_masks(graph, final).flops / base_cost(graph).flops == pytest.approx(
        0.5, abs=0.03)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        masked = model.cpu().eval()(x)
    pruned, _ = surgery(cb, copy.deepcopy(model), x)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked, atol=1e-5)
    with pytest.raises(ConfigError, match="round_to"):
        get_method("chex")(round_to=0)
