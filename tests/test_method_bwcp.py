"""BWCP: activation probabilities, Gumbel masks, residual mask sharing, cost control, export."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import prunelab
from prunelab.cli.config import build_config
from prunelab.data import build_data
from prunelab.errors import ConfigError, UnsupportedModelError
from prunelab.graph.cost import base_cost, cost_of_masks
from prunelab.layers import BatchWhitening2d
from prunelab.methods import PruneTask, get_method
from prunelab.methods.bwcp import (
    BWCPCallback,
    BWCPOptions,
    ChannelGates,
    activation_probability,
    expected_cost,
    gumbel_soft_mask,
    prepare,
)
from prunelab.methods.bwcp_export import conv_bn_pairs, fold_and_prune, threshold_for_target
from prunelab.train import TrainConfig

X = torch.zeros(1, 3, 32, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _bwcp_model(name: str = "resnet20", seed: int = 0, **opts: object) -> tuple:
    """A converted model with varied γ, β and trained running statistics."""
    torch.manual_seed(seed)
    return varied_bwcp(prunelab.create(name), X, **opts)


def varied_bwcp(model: nn.Module, x: torch.Tensor, **opts: object) -> tuple:
    """`model` converted to BWCP, its γ, β varied and running statistics from 3 batches."""
    gates = prepare(model, x, BWCPOptions(**opts))  # type: ignore[arg-type]
    with torch.no_grad():
        for layer in gates.layers:
            layer.module.weight.uniform_(0.3, 1.5)
            layer.module.bias.normal_(0.2, 0.6)
    gates.enabled = False
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *x.shape[1:]))
    gates.enabled = True
    return model.eval(), gates


# ------------------------------------------------------------------ formulas
def test_activation_probability_is_the_erf_formula() -> None:
    gamma = torch.tensor([1.0, -2.0, 0.5, 3.0, 1e-12])
    beta = torch.tensor([0.0, 1.0, -0.3, 0.05, 0.2])
    delta = 0.05
    p = activation_probability(gamma, beta, delta)
    for g, b, got in zip(gamma.tolist(), beta.tolist(), p.tolist(), strict=True):
        # P(γ z + β > δ) for z ~ N(0, 1) is Φ((β − δ) / |γ|)
        z = (b - delta) / max(abs(g), 1e-8)
        assert got == pytest.approx(0.5 * (1 + math.erf(z / math.sqrt(2))), abs=1e-6)
    assert p[3] == pytest.approx(0.5)  # β = δ sits on the boundary
    assert p[4] == pytest.approx(1.0)  # γ -> 0: deterministic


def test_whitened_probability_uses_the_equivalent_affine() -> None:
    _model, gates = _bwcp_model()
    layer = gates.layers[3]
    assert isinstance(layer.module, BatchWhitening2d)
    gam, bet = layer.module.equivalent_affine()
    expected = activation_probability(gam, bet, gates.delta)
    assert torch.allclose(gates.layer_probability(layer), expected)
    plain = activation_probability(layer.module.weight, layer.module.bias, gates.delta)
    assert torch.allclose(gates.layer_probability(layer, whitened=False), plain)
    assert not torch.allclose(expected, plain)


def test_gumbel_masks_tend_to_hard_masks_as_temperature_falls() -> None:
    torch.manual_seed(0)
    p = torch.tensor([0.1, 0.5, 0.9]).repeat(4000, 1)
    cold = gumbel_soft_mask(p, 1e-5)
    assert float((torch.minimum(cold, 1 - cold) < 1e-2).float().mean()) > 0.999  # 0 or 1
    assert torch.allclose(cold.mean(0), torch.tensor([0.1, 0.5, 0.9]), atol=0.03)  # Bernoulli(P)
    warm = gumbel_soft_mask(p, 0.5)
    softness = [float(torch.minimum(m, 1 - m).mean()) for m in (cold, warm, gumbel_soft_mask(p, 5))]
    assert softness == sorted(softness)  # softer as τ grows
    p.requires_grad_()
    gumbel_soft_mask(p, 0.5).sum().backward()
    assert p.grad is not None and bool((p.grad >= 0).all()) and float(p.grad.mean()) > 0


def test_hard_masks_threshold_probabilities_at_one_half() -> None:
    _model, gates = _bwcp_model(shortcuts=False)
    probs = gates.probabilities()
    masks = gates.channel_masks(gates.hard_unit_masks())
    for layer in gates.layers:
        expected = (probs[layer.name] > 0.5).float()
        if expected.any():
            assert torch.equal(masks[layer.name], expected)


@pytest.mark.parametrize("whiten", [True, False])
def test_initial_probability_is_set_through_beta(whiten: bool) -> None:
    torch.manual_seed(0)
    model = prunelab.create("resnet20")
    gates = prepare(model, X, BWCPOptions(init_probability=0.85, whiten=whiten))
    for p in gates.probabilities().values():
        assert torch.allclose(p, torch.full_like(p, 0.85), atol=1e-4)
    masks = gates.hard_unit_masks()
    assert all(bool(m.all()) for m in masks.values())  # the full network to start


def test_sparsity_loss_formula() -> None:
    _model, gates = _bwcp_model()
    got = gates.sparsity_loss(1e-3, 2e-3)
    want = sum(
        1e-3 * float(layer.module.weight.detach().abs().sum())
        + 2e-3 * float(layer.module.bias.detach().sum())
        for layer in gates.layers
    )
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)


def test_sparsity_loss_on_every_norm_layer_with_streams_unmasked() -> None:
    model, gates = _bwcp_model(shortcuts=False)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, BatchWhitening2d))]
    want = sum(1e-3 * float(m.weight.detach().abs().sum()) + 2e-3 * float(m.bias.detach().sum())
               for m in norms)  # fmt: skip
    assert gates.skipped  # the stream BNs are unmasked ...
    every = float(gates.sparsity_loss(1e-3, 2e-3, every_norm=True).detach())
    assert every == pytest.approx(want, rel=1e-5)
    masked_only = float(gates.sparsity_loss(1e-3, 2e-3).detach())
    assert masked_only != pytest.approx(want, rel=1e-3)  # ... and regularised only with "all"
    for layers, expected in (("all", want), ("masked", masked_only)):
        cb = BWCPCallback(gates, BWCPOptions(lambda1=1e-3, lambda2=2e-3, loss_layers=layers),
                          None, "flops")  # fmt: skip
        loss = cb.extra_loss(_Clock(0), X, X)  # type: ignore[arg-type]
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------- mask sharing
def test_residual_stage_shares_one_mask_and_added_channels_stay_aligned() -> None:
    model, gates = _bwcp_model(sampling="hard_st")
    coupled = [g for g in gates.graph.groups if g.coupled and g.index in gates.groups]
    assert len(coupled) == 3  # the three residual stages of ResNet-20
    stage1 = next(g for g in coupled if "layer1.0.bn2" in g.norms)
    assert {"bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"} <= set(stage1.norms)
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda m, a, out, n=n: outputs.__setitem__(n, out.detach())
        )
        for n in ("layer1.0", "layer1.1", "layer1.2", "bn1")
    ]
    for mode in ("train", "eval"):
        model.train(mode == "train")
        model(torch.randn(8, 3, 32, 32))
        masks = gates._masks
        for group in coupled:
            members = [masks[n] for n in group.norms]
            assert all(torch.equal(members[0], m) for m in members[1:])
        shared = masks["layer1.0.bn2"]
        off = shared == 0
        assert off.any() and (~off).any()
        if mode == "eval":  # the paper's rule: stage 1 reuses the stem's (previous) mask
            probs = gates.probabilities()
            assert torch.equal(shared.bool(), probs["bn1"] > 0.5)
            # a stage started by a projection: downsample x its block's last layer
            lead = (probs["layer2.0.downsample.1"] > 0.5) & (probs["layer2.0.bn2"] > 0.5)
            assert torch.equal(masks["layer2.1.bn2"].bool(), lead)
        for name in ("bn1", "layer1.0", "layer1.1", "layer1.2"):
            assert float(outputs[name][:, off].abs().max()) == 0.0  # the stream is zero there
    for h in hooks:
        h.remove()


def test_later_blocks_reuse_the_stage_mask_unless_all_layers_share() -> None:
    _model, gates = _bwcp_model()
    follower = next(layer for layer in gates.layers if layer.name == "layer1.2.bn2")
    assert not follower.leads
    before = gates.hard_unit_masks()
    with torch.no_grad():
        follower.module.bias.fill_(-50.0)  # its own P -> 0: the stage mask does not care
    assert all(torch.equal(before[g], m) for g, m in gates.hard_unit_masks().items())
    _model, first_two = _bwcp_model(stage_mask="sources", shared_sources=2)
    assert {la.name for la in first_two.layers if la.leads} >= {"bn1", "layer1.0.bn2"}
    _model, every = _bwcp_model(stage_mask="sources", shared_sources=0)
    assert all(layer.leads for layer in every.layers)
    with torch.no_grad():
        next(la for la in every.layers if la.name == "layer1.2.bn2").module.bias.fill_(-50.0)
    stage = every.graph.group_of("layer1.2.bn2").index
    assert int(every.hard_unit_masks()[stage].sum()) == 1  # the product: only a survivor


class _Clock:
    def __init__(self, step: int, per_epoch: int = 10) -> None:
        self.global_step, self.steps_per_epoch = step, per_epoch


def test_warmup_uses_expected_masks_then_gumbel() -> None:
    _model, gates = _bwcp_model()
    opts = BWCPOptions(warmup_epochs=1, warmup_sampling="expected")
    cb = BWCPCallback(gates, opts, None, "flops")
    cb.on_step_start(_Clock(3), (X, X))  # type: ignore[arg-type]
    assert gates.sampling == "expected"
    assert cb.extra_loss(_Clock(3), X, X) is None  # type: ignore[arg-type]
    cb.on_step_start(_Clock(10), (X, X))  # type: ignore[arg-type]
    assert gates.sampling == "gumbel"
    assert cb.extra_loss(_Clock(10), X, X) is not None  # type: ignore[arg-type]
    probs = gates.probabilities(leading=True)
    gates.sampling = "expected"
    masks = gates._sample()
    assert torch.allclose(masks["layer2.0.bn1"], probs["layer2.0.bn1"])  # the mean, no noise


def test_unmasked_shortcuts_option_leaves_coupled_groups_whole() -> None:
    _model, gates = _bwcp_model(shortcuts=False)
    assert "layer1.0.bn2" in gates.skipped and "bn1" in gates.skipped
    assert all(not gates.graph.groups[g].coupled for g in gates.groups)


# -------------------------------------------------------------------- costs
def test_expected_cost_matches_the_engine_on_zero_one_probabilities() -> None:
    _model, gates = _bwcp_model()
    graph = gates.graph
    ones = {g: torch.ones(graph.groups[g].size) for g in gates.groups}
    assert expected_cost(graph, ones)["flops"] == pytest.approx(base_cost(graph).flops)
    masks = gates.hard_unit_masks()
    zero_one = {g: m.float() for g, m in masks.items()}
    engine = cost_of_masks(graph, masks)
    got = expected_cost(graph, zero_one)
    assert got["flops"] == pytest.approx(engine.flops)
    assert got["params"] == pytest.approx(engine.params)
    assert 0 < gates.expected_ratio("flops") < 1


def test_multiplier_update_moves_lambda_towards_the_target() -> None:
    _model, gates = _bwcp_model()
    opts = BWCPOptions(control_rate=0.5, tolerance=0.02)
    ratio = gates.hard_ratio("flops")
    above = BWCPCallback(gates, opts, target=ratio / 2, metric="flops")
    above.control()
    assert above.scale == pytest.approx(math.exp(0.5))  # cost twice the target: λ grows
    below = BWCPCallback(gates, opts, target=min(1.0, ratio * 1.25), metric="flops")
    below.control()
    assert below.scale < 1.0
    met = BWCPCallback(gates, opts, target=ratio * 1.01, metric="flops")
    met.control()
    assert met.scale == 1.0  # inside the 2% band nothing changes
    assert len(met.timeline) == 1
    state = above.state_dict()
    other = BWCPCallback(gates, opts, target=0.5, metric="flops")
    other.load_state_dict(state)
    assert other.scale == above.scale


def test_threshold_search_meets_a_cost_target() -> None:
    _model, gates = _bwcp_model()
    t = threshold_for_target(gates, "flops", 0.3)
    assert gates.hard_ratio("flops", t) == pytest.approx(0.3, rel=0.02)


# ------------------------------------------------------------------- export
@pytest.mark.parametrize("name", ["resnet20", "cifar_mobilenet_v2"])
def test_export_is_a_plain_pruned_model_equal_to_the_eval_model(name: str, tmp_path) -> None:
    model, gates = _bwcp_model(name)
    x = torch.randn(8, 3, 32, 32)
    masks = gates.channel_masks(gates.hard_unit_masks())
    with torch.no_grad():
        reference = model(x)
    gates.remove()
    small = fold_and_prune(model, gates.pairs, masks, X)
    assert not any(isinstance(m, BatchWhitening2d) for m in small.modules())
    assert prunelab.count(small, X).flops < prunelab.count(prunelab.create(name), X).flops
    with torch.no_grad():
        out = small(x)
    assert torch.allclose(out, reference, atol=1e-4 * max(1.0, float(reference.abs().max())))
    prunelab.save(small, tmp_path / "bwcp.pt")
    loaded = prunelab.load(tmp_path / "bwcp.pt")
    with torch.no_grad():
        assert torch.allclose(loaded(x), out, atol=1e-6)


def test_conv_bias_is_folded_through_the_whitening() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU())
    with torch.no_grad():
        net[0].bias.normal_()
    pairs = conv_bn_pairs(net)
    assert pairs == {"1": "0"}
    net[1] = BatchWhitening2d.from_batchnorm(net[1], group_size=4)
    net.train()
    net(torch.randn(8, 3, 6, 6))
    net.eval()
    x = torch.randn(4, 3, 6, 6)
    folded = fold_and_prune(net, pairs, {}, x[:1])
    assert isinstance(folded[1], nn.BatchNorm2d)
    assert torch.allclose(folded(x), net(x), atol=1e-5)


@pytest.mark.parametrize("bn_stats", ["matched", "identity"])
def test_exported_batch_norm_keeps_training_mode_close_to_evaluation(bn_stats: str) -> None:
    """A fine-tune (BWCP*) runs the export in training mode: with statistics matched to the
    folded conv's output, its batch statistics reproduce the evaluation map; the identity
    statistics only agree in evaluation (they normalise z and subtract its mean again)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU())
    with torch.no_grad():
        net[0].bias.normal_()
        net[1].weight.uniform_(0.5, 2.0)
        net[1].bias.normal_()
    pairs = conv_bn_pairs(net)
    net[1] = BatchWhitening2d.from_batchnorm(net[1], group_size=4)
    net[1].momentum = None  # running moments = those of the one batch below
    x = torch.randn(64, 3, 6, 6) * 2 + 1
    net.train()
    net(x)
    net.eval()
    with torch.no_grad():
        reference = net(x)
    folded = fold_and_prune(net, pairs, {}, x[:1], bn_stats=bn_stats)
    with torch.no_grad():
        assert torch.allclose(folded.eval()(x), reference, atol=1e-4)
        train_mode = folded.train()(x)
    drift = float((train_mode - reference).abs().max())
    if bn_stats == "matched":
        assert drift < 1e-2 * float(reference.abs().max()), drift
    else:
        assert drift > 0.1 * float(reference.abs().max()), drift


def test_pre_activation_norm_layers_are_rejected() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    with pytest.raises(UnsupportedModelError, match="after a convolution"):
        conv_bn_pairs(net)


def test_without_whitening_masks_batch_norm_outputs() -> None:
    model, gates = _bwcp_model(whiten=False, sampling="hard_st")
    assert not any(isinstance(m, BatchWhitening2d) for m in model.modules())
    layer = next(lay for lay in gates.layers if lay.name == "layer2.0.bn1")
    seen = {}
    h = layer.module.register_forward_hook(lambda m, a, out: seen.__setitem__("y", out))
    model(torch.randn(4, 3, 32, 32))  # eval: hard masks through the BN's forward hook
    h.remove()
    off = gates._masks["layer2.0.bn1"] == 0
    assert off.any() and float(seen["y"].detach()[:, off].abs().max()) == 0.0


# --------------------------------------------------------------- the method
def test_target_ramp_moves_the_aim_from_the_first_cost_to_the_target() -> None:
    _model, gates = _bwcp_model()
    opts = BWCPOptions(control_rate=0.5, warmup_epochs=1, target_ramp_epochs=2)
    ratio = gates.hard_ratio("flops")
    cb = BWCPCallback(gates, opts, target=ratio / 2, metric="flops")
    cb.on_train_start(SimpleNamespace(steps_per_epoch=10))
    assert (cb.ramp_start, cb.ramp_steps) == (10, 20)
    cb.control(step=10)  # the first update fixes the ramp's start at the measured cost
    assert cb.start_ratio == pytest.approx(ratio) and cb.scale == 1.0  # on the aim: no change
    assert cb.aim(20) == pytest.approx(0.75 * ratio)
    assert cb.aim(30) == cb.aim(400) == pytest.approx(ratio / 2)
    cb.control(step=20)  # 1/0.75 of the aim: a third of the full error's step
    assert cb.scale == pytest.approx(math.exp(0.5 / 3))
    assert cb.timeline[-1][3] == pytest.approx(0.75 * ratio)
    other = BWCPCallback(gates, opts, target=ratio / 2, metric="flops")
    other.load_state_dict(cb.state_dict())
    assert other.start_ratio == cb.start_ratio
    with pytest.raises(ConfigError, match="target_ramp_epochs"):
        BWCPOptions(target_ramp_epochs=-1).validate()


def _task(target: float = 0.5, epochs: int = 2) -> PruneTask:
    data = build_data("synthetic", batch_size=16, n_train=128, n_test=64)
    cfg = TrainConfig(
        epochs=epochs, lr=0.05, steps_per_epoch=4, quiet=True, threads=1, channels_last="on"
    )
    return PruneTask(model=prunelab.create("resnet20"), data=data, target=target, train=cfg)


def test_method_run_meets_the_target_and_exports() -> None:
    torch.manual_seed(0)
    method = get_method("bwcp")(
        lambda1=1e-3, lambda2=2e-3, target_control=True, control_every=2, warmup_epochs=1
    )
    result = method.run(_task(target=0.5))
    info = result.info
    assert info["achieved_flops"] == pytest.approx(0.5, rel=0.02)
    assert info["export_max_diff"] <= 1e-4 * max(1.0, info["export_reference_max"])
    assert not any(isinstance(m, BatchWhitening2d) for m in result.model.modules())
    assert result.history[0].get("train_extra_loss") is None  # warm-up: no loss
    assert "train_extra_loss" in result.history[1]
    assert {"bwcp_scale", "bwcp_hard_flops", "bwcp_expected_flops"} <= set(result.history[1])
    assert [t[0] for t in info["control_timeline"]] == [4, 6, 8]  # after warm-up, every 2
    assert set(info["probabilities"]) == set(info["probabilities_bn"])


def test_method_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        get_method("bwcp")(sampling="bernoulli").run(_task())
    with pytest.raises(ConfigError):
        get_method("bwcp")(no_such_option=1)
    with pytest.raises(ConfigError):
        get_method("bwcp")(temperature=0).run(_task())


def test_gates_skip_groups_the_engine_cannot_prune() -> None:
    model = prunelab.create("resnet20")
    graph = prunelab.trace(model, X, ignore=["conv1"])
    gates = ChannelGates(model, graph, ["bn1", "layer1.0.bn1"], shortcuts=True)
    assert gates.skipped == ["bn1"]  # the stem's stage group is fixed by `ignore`
    assert [layer.name for layer in gates.layers] == ["layer1.0.bn1"]
    gates.remove()


# ---------------------------------------------------------- recalibration
def test_whitening_reset_running_stats_restores_the_initial_estimates() -> None:
    bw = BatchWhitening2d(32, group_size=16).train()
    bw(torch.randn(8, 32, 4, 4) * 3 + 1)
    bw.reset_running_stats()
    fresh = BatchWhitening2d(32, group_size=16)
    for name, buf in fresh.named_buffers():
        assert torch.equal(getattr(bw, name), buf), name


def test_recalibration_makes_eval_equal_training_under_hard_masks() -> None:
    model, gates = _bwcp_model()
    data = build_data("synthetic", batch_size=64, n_train=64, n_test=16)
    loader = data.train
    before = loader.state_dict()
    (x, _), = list(loader)  # one batch: the whole set
    loader.load_state_dict(before)
    model.train()
    gates.recalibrate(loader, steps=1)
    assert model.training  # the mode is given back
    assert torch.equal(loader.state_dict()["generator"], before["generator"])
    assert loader.epoch == before["epoch"]
    gates.hard_in_training = True  # the reference: batch statistics, evaluation masks
    with torch.no_grad():
        reference = model.train()(x)
    gates.hard_in_training = False
    with torch.no_grad():
        evaluated = model.eval()(x)
    # Same batch, so only the unbiased variance estimate (n/(n-1)) separates them.
    assert torch.allclose(evaluated, reference, rtol=2e-3, atol=2e-3 * float(reference.abs().max()))
    with torch.no_grad():
        sampled = gates.probabilities(leading=True)
    assert sampled  # the gates are still installed and masking


def test_evaluation_during_training_recalibrates_under_hard_masks() -> None:
    seen = []
    original = ChannelGates.recalibrate

    def spy(self, loader, steps, masked=True):  # type: ignore[no-untyped-def]
        seen.append((steps, masked))
        original(self, loader, steps, masked)

    ChannelGates.recalibrate = spy  # type: ignore[method-assign]
    try:
        torch.manual_seed(0)
        get_method("bwcp")(lambda1=1e-3, lambda2=2e-3, recalibrate_batches=3).run(_task(epochs=2))
    finally:
        ChannelGates.recalibrate = original  # type: ignore[method-assign]
    assert seen and all(s == (3, True) for s in seen)
    with pytest.raises(ConfigError):
        get_method("bwcp")(recalibrate_batches=-1).run(_task())


def test_sharpen_pushes_probabilities_to_zero_and_one_and_keeps_the_threshold() -> None:
    from prunelab.methods.bwcp import sharpen

    p = torch.linspace(0, 1, 101)
    q = sharpen(p, 10.0)
    assert torch.allclose(q[[0, 50, 100]], torch.tensor([0.0, 0.5, 1.0]), atol=1e-6)
    assert bool((q[1:] >= q[:-1]).all())  # monotone: 1[P > 1/2] unchanged
    assert bool((q[60:100] > p[60:100]).all()) and bool((q[1:40] < p[1:40]).all())
    assert torch.equal(sharpen(p, 0.0), p)
    _model, gates = _bwcp_model(sharpen=10.0)
    assert gates.sharpen == 10.0
    gates.sampling = "expected"
    probs = gates.probabilities(leading=True)
    assert torch.allclose(gates._sample()["layer2.0.bn1"], sharpen(probs["layer2.0.bn1"], 10.0))


def test_partial_whitening_whitens_only_the_chosen_layers_and_still_exports() -> None:
    model, gates = _bwcp_model(whiten_only=["layer3.*"])
    kinds = {layer.name: type(layer.module) for layer in gates.layers}
    assert kinds and all(
        (k is BatchWhitening2d) == n.startswith("layer3.") for n, k in kinds.items()
    )
    assert any(k is nn.BatchNorm2d for k in kinds.values())  # the others stay BN, masked
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    masks = {k: v.cpu() for k, v in gates.channel_masks(gates.hard_unit_masks()).items()}
    gates.remove()
    pruned = fold_and_prune(model, gates.pairs, masks, X)
    with torch.no_grad():
        assert torch.allclose(pruned(x), ref, atol=1e-4)
    with pytest.raises(ConfigError, match="whiten_only"):
        BWCPOptions(whiten_only="layer3.*").validate()  # type: ignore[arg-type]


@pytest.mark.slow
def test_bwcp_star_fine_tunes_the_exported_model() -> None:
    torch.manual_seed(0)
    opts = {"lambda1": 1e-3, "lambda2": 2e-3, "target_control": True, "control_every": 2,
            "recalibrate_batches": 2}  # fmt: skip
    plain = get_method("bwcp")(**opts).run(_task(target=0.5, epochs=1))
    torch.manual_seed(0)
    star = get_method("bwcp")(**opts, finetune_epochs=1, finetune_lr=0.01).run(
        _task(target=0.5, epochs=1))
    widths = [[m.out_channels for m in r.model.modules() if isinstance(m, nn.Conv2d)]
              for r in (plain, star)]  # fmt: skip
    assert widths[0] == widths[1]  # the same exported architecture, then fine-tuned
    assert len(star.history) == len(plain.history) + 1 and "finetune" in star.info
    changed = [not torch.equal(a, b) for a, b in
               zip(plain.model.state_dict().values(), star.model.state_dict().values(),
                   strict=True)]
    assert any(changed)


BWCP_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("bwcp_*.yaml"))


@pytest.mark.parametrize("path", BWCP_CONFIGS, ids=[p.stem for p in BWCP_CONFIGS])
def test_shipped_configs_start_every_channel_above_the_test_threshold(path) -> None:
    cfg = build_config({}, [str(path)], [])
    method = dict(cfg["method"])
    assert method.pop("name") == "bwcp"
    opts = BWCPOptions(**method)
    opts.validate()
    TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(0)
    size = 64 if cfg["data"]["name"] == "imagefolder" else 32  # the model at a small size
    model = prunelab.create(cfg["model"], num_classes=10)
    gates = prepare(model, torch.zeros(1, 3, size, size), opts)
    assert gates.hard_ratio("flops") > 0.9
