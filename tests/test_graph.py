"""The channel engine on real architectures: groups, masks, surgery."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from prunelab import models
from prunelab.errors import PrunelabError, UnsupportedModelError
from prunelab.graph import ChannelMask, Plan, prune, trace
from prunelab.graph.cost import plan_cost
from prunelab.metrics import count
from tests._contract import assert_close_rel, masked_and_pruned, random_plan
from tests._nets import (
    ConvBN,
    Dense,
    GroupedBlock,
    Head,
    InvertedResidual,
    Residual,
    SqueezeExcite,
    randomize_bn,
)

# fmt: off
TORCHVISION = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "wide_resnet50_2",
    "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
    "regnet_x_400mf",
]
ZOO = [
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet164", "cifar_vgg16",
    "cifar_vgg19", "densenet40", "cifar_mobilenet_v2", "wrn28_10",
]
# fmt: on


def _check_contract(model: nn.Module, x: torch.Tensor, keeps: tuple[float, ...]) -> None:
    model = randomize_bn(model).eval()
    graph = trace(model, x)
    assert graph.prunable, "expected prunable groups"
    dense_params = sum(p.numel() for p in model.parameters())
    for i, keep in enumerate(keeps):
        plan = random_plan(graph, keep, seed=i)
        a, b, pruned = masked_and_pruned(model, plan, x)
        assert a.shape == b.shape
        assert_close_rel(a, b)
        assert sum(p.numel() for p in pruned.parameters()) < dense_params
        # the analytic cost planners search with is what counting the pruned model gives
        counted = count(pruned, x[:1])
        assert (plan_cost(plan).flops, plan_cost(plan).params) == (counted.flops, counted.params)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_masked_equals_pruned(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10)
    keeps = (
        (0.3, 0.7) if name in ("resnet101", "wide_resnet50_2", "densenet121") else (0.2, 0.5, 0.8)
    )
    _check_contract(model, torch.randn(2, 3, 64, 64), keeps)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_masked_equals_pruned(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name)
    _check_contract(model, torch.randn(2, 3, 32, 32), (0.25, 0.6))


def test_residual_stage_is_one_coupled_group() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    graph = trace(model, torch.randn(1, 3, 64, 64))
    stage1 = graph.group_of("conv1")
    assert stage1.coupled
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(stage1.producers)
    assert {"layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.0"} <= set(stage1.consumers)
    stage2 = graph.group_of("layer2.0.conv2")
    assert {"layer2.0.downsample.0", "layer2.1.conv2"} <= set(stage2.producers)
    inner = graph.group_of("layer1.0.conv1")
    assert not inner.coupled and inner.producers == ["layer1.0.conv1"]
    assert inner.consumers == ["layer1.0.conv2"]


def test_concatenation_offsets_into_consumer() -> None:
    model = nn.Sequential(ConvBN(3, 4), Dense(4, 3), Dense(7, 2), nn.Conv2d(9, 5, 1))
    graph = trace(model, torch.randn(1, 3, 8, 8))
    consumer = "3"

    def positions(producer: str) -> list[int]:
        g = graph.group_of(producer)
        (m,) = [m for m in g.members if m.module == consumer and m.role == "in"]
        return m.positions.tolist()

    assert positions("0.0") == [0, 1, 2, 3]
    assert positions("1.conv.0") == [4, 5, 6]
    assert positions("2.conv.0") == [7, 8]


def test_flatten_into_linear_maps_each_channel_to_hw_inputs() -> None:
    model = nn.Sequential(ConvBN(3, 6), Head(6, 2, 4))
    graph = trace(model, torch.randn(1, 3, 8, 8))
    g = graph.group_of("0.0")
    (fc,) = [m for m in g.members if m.module == "1.fc"]
    assert fc.dim == 1 and len(fc.positions) == 6 * 4
    assert fc.units.tolist() == [u for u in range(6) for _ in range(4)]


def test_classifier_output_is_never_pruned_and_ignore_is_respected() -> None:
    model = models.create("resnet20")
    graph = trace(model, torch.randn(1, 3, 32, 32), ignore=["layer1.0.conv1"])
    fc_group = graph.group_of("fc")
    assert not fc_group.prunable and "output" in fc_group.reason
    ignored = graph.group_of("layer1.0.conv1")
    assert not ignored.prunable and "ignored" in ignored.reason
    assert graph.group_of("layer1.1.conv1").prunable


def test_depthwise_outputs_are_tied_to_their_input_channels() -> None:
    model = nn.Sequential(ConvBN(3, 4), InvertedResidual(4, expand=2, multiplier=2))
    graph = trace(model, torch.randn(1, 3, 8, 8))
    g = graph.group_of("1.expand.0")
    dw = [m for m in g.members if m.module == "1.dw.0" and m.param == "weight"]
    assert len(dw) == 1 and dw[0].dim == 0
    assert g.size == 8 and len(dw[0].positions) == 16  # each unit owns its 2 derived outputs
    assert dw[0].units.tolist() == [u for u in range(8) for _ in range(2)]
    _check_contract(model, torch.randn(2, 3, 8, 8), (0.5,))


def test_grouped_conv_prunes_the_same_slot_in_every_group() -> None:
    model = nn.Sequential(ConvBN(3, 8), GroupedBlock(8, groups=2), nn.Conv2d(8, 3, 1))
    graph = trace(model, torch.randn(1, 3, 8, 8))
    g_in = graph.group_of("0.0")
    assert g_in.size == 4 and g_in.unit_width == 2
    _check_contract(model, torch.randn(2, 3, 8, 8), (0.5, 0.75))
    pruned = prune(model, random_plan(graph, 0.5, seed=0))
    assert pruned[1].conv[0].groups == 2 and pruned[1].conv[0].in_channels == 4


def test_squeeze_excitation_ties_gate_to_channels() -> None:
    model = nn.Sequential(ConvBN(3, 8), SqueezeExcite(8, 2), nn.Conv2d(8, 4, 1))
    graph = trace(model, torch.randn(1, 3, 8, 8))
    g = graph.group_of("0.0")
    assert "1.fc2" in g.producers and g.coupled
    assert graph.group_of("1.fc1").prunable
    _check_contract(model, torch.randn(2, 3, 8, 8), (0.5,))


def test_channel_shuffle_prunes_as_a_fixed_permutation() -> None:
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    _check_contract(model, torch.randn(2, 3, 64, 64), (0.3, 0.6))
    graph = trace(model, torch.randn(1, 3, 64, 64))
    # chunk(2) and the shuffle's view(B, 2, C/2, ...) tie channel j of both halves
    assert graph.group_of("stage2.0.branch2.5").unit_width >= 2


class _HardCodedShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = y.view(y.shape[0], 2, -1, 8, 8).transpose(1, 2).reshape(y.shape[0], 2, 2, 2, 8, 8)
        return self.out(y.flatten(1, 3))


def test_a_shuffle_that_regroups_channels_is_a_clear_error() -> None:
    model = _HardCodedShuffle()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError, match=r"Tensor.reshape.*split channels"):
        trace(model, torch.randn(1, 3, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _Upsampler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBN(3, 4), nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            return y
        return -y


def test_unknown_module_names_type_and_path() -> None:
    with pytest.raises(UnsupportedModelError, match=r"ConvTranspose2d.*body\.1"):
        trace(_Upsampler(), torch.randn(1, 3, 8, 8))


def test_python_control_flow_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedModelError, match="control flow"):
        trace(_DataDependent(), torch.randn(1, 3, 8, 8))


def test_channel_mixing_ops_fix_their_groups_instead_of_failing() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = ConvBN(3, 8)
            self.norm = nn.GroupNorm(2, 8)
            self.b = ConvBN(8, 8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.b(self.norm(self.a(x)))
            return self.fc(y.mean(dim=(2, 3)))

    graph = trace(Mixed(), torch.randn(1, 3, 8, 8))
    assert not graph.group_of("a.0").prunable
    assert "GroupNorm" in graph.group_of("a.0").reason
    assert graph.group_of("b.0").prunable


def test_masked_weights_never_move_during_training() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        ConvBN(3, 8), Residual(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    graph = trace(model, torch.randn(2, 3, 8, 8))
    mask = ChannelMask(model, graph)
    plan = random_plan(graph, 0.5, seed=3)
    for g in plan.keep:
        mask.set(g, plan.keep_mask(g))
    mask.apply()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(5):
        loss = nn.functional.cross_entropy(
            model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 0])
        )
        opt.zero_grad()
        loss.backward()
        mask.mask_grads()
        opt.step()
        mask.apply()
    for tensor, vec in mask.compiled:
        zeroed = (vec == 0).expand_as(tensor)
        assert torch.all(tensor[zeroed] == 0)
        assert not torch.equal(tensor[~zeroed], tensor[~zeroed].detach() * 0)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "unmasked weights should train"


def test_plans_refuse_impossible_requests() -> None:
    model = models.create("resnet20")
    graph = trace(model, torch.randn(1, 3, 32, 32))
    g = graph.prunable[0]
    with pytest.raises(PrunelabError, match="every channel"):
        Plan(graph, {g.index: []})
    fc = graph.group_of("fc")
    with pytest.raises(PrunelabError, match="may not be pruned"):
        Plan(graph, {fc.index: [0, 1]})
    with pytest.raises(PrunelabError, match="outside"):
        Plan(graph, {g.index: [g.size]})


def test_prune_inplace_returns_the_same_object_and_copy_leaves_original() -> None:
    model = models.create("resnet20")
    graph = trace(model, torch.randn(1, 3, 32, 32))
    plan = random_plan(graph, 0.5, seed=0)
    dense = sum(p.numel() for p in model.parameters())
    copy_ = prune(model, plan)
    assert copy_ is not model and sum(p.numel() for p in model.parameters()) == dense
    same = prune(model, plan, inplace=True)
    assert same is model and sum(p.numel() for p in model.parameters()) < dense
