"""BWCP on pre-activation networks: per-layer masks on the BN before each conv, exact export."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunelab
from prunelab.data import build_data
from prunelab.errors import ConfigError, UnsupportedModelError
from prunelab.layers import BatchWhitening2d, SelectedNorm2d
from prunelab.methods import PruneTask, get_method
from prunelab.methods.bwcp import BWCPOptions, prepare
from prunelab.methods.bwcp_export import fold_and_prune, split_norms
from prunelab.models.wide_resnet import WideResNet
from prunelab.train import TrainConfig
from tests.test_method_bwcp import varied_bwcp

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.zeros(1, 3, 16, 16)


def tiny_densenet() -> nn.Module:
    """The zoo's DenseNet-40 at growth rate 2 (36 dense layers, 4 to 76 channels)."""
    return prunelab.create("densenet40", growth_rate=2, stem_width=4)


class MixedDense(nn.Module):
    """A conv-BN stem whose output also feeds pre-activation layers (torchvision DenseNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm0 = nn.BatchNorm2d(8)
        self.norm1 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm0(self.conv0(x)))
        x = torch.cat([x, self.conv1(torch.relu(self.norm1(x)))], 1)
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.norm(x)), 1)
        return self.fc(torch.flatten(x, 1))


BUILDERS = {"densenet": tiny_densenet, "preact_resnet": lambda: WideResNet(10, 1),
            "mixed": MixedDense}  # fmt: skip


def _gated(build, seed: int = 0, **opts: object) -> tuple[nn.Module, object]:
    """A converted model with varied γ, β (about a third of the channels off) and statistics."""
    torch.manual_seed(seed)
    return varied_bwcp(build(), X, group_size=4, **opts)


def _export(model: nn.Module, gates) -> nn.Module:
    masks = {k: v.cpu() for k, v in gates.channel_masks(gates.evaluation_masks()).items()}
    gates.remove()
    consumers = {n: p.consumers for n, p in gates.preact.items()}
    return fold_and_prune(model, gates.pairs, masks, X, consumers, gates.shortcuts)


@pytest.mark.parametrize("reading", ["whiten", "bn"])
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_hardened_masked_model_equals_the_pruned_one_at_the_planned_cost(
    arch: str, reading: str
) -> None:
    model, gates = _gated(BUILDERS[arch], preact_whitening=reading)
    assert gates.preact  # the pre-activation layers are masked, not refused
    whitened = [isinstance(model.get_submodule(n), BatchWhitening2d) for n in gates.preact]
    assert all(whitened) if reading == "whiten" else not any(whitened)
    planned = {m: gates.hard_ratio(m) for m in ("flops", "params")}
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        reference = model(x)
    pruned = _export(model, gates)
    with torch.no_grad():
        out = pruned(x)
    assert torch.allclose(out, reference, atol=1e-4 * max(1.0, float(reference.abs().max())))
    assert not any(isinstance(m, BatchWhitening2d) for m in pruned.modules())
    assert sum(isinstance(m, SelectedNorm2d) for m in pruned.modules()) == len(gates.preact)
    dense, small = prunelab.count(BUILDERS[arch](), X), prunelab.count(pruned, X)
    assert small.flops / dense.flops == pytest.approx(planned["flops"], rel=1e-9)
    assert small.params / dense.params == pytest.approx(planned["params"], rel=1e-9)
    assert planned["flops"] < 1.0  # channels really went (whitening convs cost extra)


def test_a_dense_layer_that_no_consumer_reads_is_cut_from_its_producer() -> None:
    model, gates = _gated(tiny_densenet, preact_whitening="bn")
    masks = gates.hard_unit_masks()
    for name in gates.preact:  # nobody reads the first dense layer's two new channels
        if name.startswith(("block1.", "trans1.")) and name != "block1.0.bn":
            masks[name][4:6] = False
    gates.fixed_masks = masks
    pruned = _export(model, gates)
    assert pruned.get_submodule("block1.0.conv").out_channels == 1  # a group keeps one unit


def test_the_whitened_reading_costs_its_grouped_convolutions_and_bn_costs_nothing() -> None:
    for reading, above in (("whiten", True), ("bn", False)):
        opts = BWCPOptions(group_size=4, preact_whitening=reading, init_probability=0.9)
        gates = prepare(tiny_densenet(), X, opts)
        assert all(bool(m.all()) for m in gates.hard_unit_masks().values())  # all kept
        full = gates.hard_ratio("flops")
        assert (full > 1.0) if above else full == pytest.approx(1.0)


def test_a_training_step_reaches_gamma_and_beta_of_pre_activation_layers() -> None:
    model, gates = _gated(tiny_densenet)
    model.train()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y) + gates.sparsity_loss(1e-3, 2e-3)
    loss.backward()
    assert torch.isfinite(loss)
    for name in gates.preact:
        layer = model.get_submodule(name)
        assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
        assert layer.bias.grad is not None and float(layer.bias.grad.abs().sum()) > 0


def test_norm_layers_neither_after_nor_before_a_conv_are_refused() -> None:
    class AddAfterNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x))
            return self.head(self.bn(y) + y)

    with pytest.raises(UnsupportedModelError, match="neither right after a convolution"):
        split_norms(AddAfterNorm())
    pairs, preact = split_norms(WideResNet(10, 1))
    assert "layer1.0.bn2" in pairs and "layer2.0.bn1" in preact
    assert set(preact["layer2.0.bn1"]) == {"layer2.0.conv1", "layer2.0.shortcut"}
    with pytest.raises(ConfigError, match="preact_whitening"):
        BWCPOptions(preact_whitening="both").validate()


def _run(seed: int) -> object:
    torch.manual_seed(seed)
    data = build_data("synthetic", batch_size=8, n_train=16, n_test=8, image_size=16, seed=seed)
    cfg = TrainConfig(epochs=1, lr=0.05, steps_per_epoch=2, quiet=True, threads=1, seed=seed)
    task = PruneTask(model=tiny_densenet(), data=data, target=0.5, train=cfg)
    method = get_method("bwcp")(
        lambda1=1e-3, lambda2=2e-3, target_control=True, control_every=1, group_size=4,
        init_probability=0.85, recalibrate_batches=1,
    )  # fmt: skip
    return method.run(task)


@pytest.mark.slow
def test_method_run_on_densenet_meets_the_target_saves_and_reproduces(tmp_path) -> None:
    first, again = _run(0), _run(0)
    assert first.info["achieved_flops"] == pytest.approx(0.5, abs=0.02)
    assert first.info["export_max_diff"] <= 1e-4 * max(1.0, first.info["export_reference_max"])
    a, b = first.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed
    prunelab.save(first.model, tmp_path / "dense.pt")
    loaded = prunelab.load(tmp_path / "dense.pt")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), first.model.eval()(x))
