"""The model zoo: every model builds, runs, traces, and carries its recipe."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
import torch.nn as nn
import torchvision

from prunelab import models
from prunelab.errors import ConfigError, UnknownNameError
from prunelab.models import registry

ZOO = [
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet164",
    "cifar_vgg16",
    "cifar_vgg19",
    "densenet40",
    "cifar_mobilenet_v2",
    "wrn28_10",
]
BIG = {"wrn28_10", "cifar_vgg16", "cifar_vgg19", "resnet164", "resnet110"}


def _batch(name: str) -> int:
    return 1 if name in BIG else 2


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_builds_runs_and_traces(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name).eval()
    size = models.default_input_size(name)
    assert size == (3, 32, 32)
    assert models.default_num_classes(name) == 10
    x = torch.randn(_batch(name), *size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (x.shape[0], 10)
        assert torch.isfinite(out).all()
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(x), out)
        # Resolution pruning feeds smaller images; global pooling must absorb them.
        assert model(torch.randn(1, 3, 24, 24)).shape == (1, 10)
    # Hooks on BN outputs must see what BN produced, not a tensor rewritten by ReLU.
    assert not [m for m in model.modules() if getattr(m, "inplace", False)]


def test_list_models_has_ours_and_torchvision() -> None:
    names = models.list_models()
    assert names == sorted(names)
    assert set(ZOO) <= set(names)
    assert {"resnet50", "mobilenet_v2", "efficientnet_b0", "vgg16"} <= set(names)
    assert all(models.is_registered(name) for name in [*ZOO, "resnet18"])
    assert not models.is_registered("resnet21")


def test_our_names_do_not_collide_with_torchvision() -> None:
    ours = set(registry._REGISTRY)
    assert set(ZOO) | {"pointnet2_ssg"} == ours  # point models: tests/test_pointcloud.py
    assert not ours & set(torchvision.models.list_models(module=torchvision.models))


def test_torchvision_model_via_create() -> None:
    model = models.create("resnet18", num_classes=7)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 7
    assert models.default_input_size("resnet18") == (3, 224, 224)
    assert models.default_num_classes("resnet18") == 1000
    assert model.prunelab_arch == {"name": "resnet18", "kwargs": {"num_classes": 7}}
    assert model.prunelab_input_size == (3, 224, 224)
    assert models.create("squeezenet1_1").prunelab_arch["kwargs"] == {"num_classes": 1000}


def test_create_attaches_recipe_and_rebuilds() -> None:
    model = models.create("resnet20", num_classes=100, widths=(8, 16, 32))
    assert model.prunelab_arch == {
        "name": "resnet20",
        "kwargs": {"num_classes": 100, "widths": (8, 16, 32)},
    }
    assert model.prunelab_input_size == (3, 32, 32)
    rebuilt = models.create_from_arch(model.prunelab_arch)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert rebuilt.fc.out_features == 100
    assert rebuilt.layer3[0].conv1.out_channels == 32


def test_create_from_arch_rejects_garbage() -> None:
    with pytest.raises(ConfigError):
        models.create_from_arch({"kwargs": {}})


def test_unknown_name_raises() -> None:
    with pytest.raises(UnknownNameError) as info:
        models.create("resnet21")
    assert info.value.kind == "model"
    assert "resnet20" in info.value.known
    with pytest.raises(UnknownNameError):
        models.default_input_size("nope")
    with pytest.raises(UnknownNameError):
        models.default_num_classes("nope")


def test_pretrained_weights_refused() -> None:
    with pytest.raises(ConfigError, match="pretrained"):
        models.create("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ConfigError):
        models.create("resnet20", pretrained=True)
    assert models.create("resnet20", weights=None).prunelab_arch["kwargs"] == {"num_classes": 10}


def test_bad_num_classes_refused() -> None:
    with pytest.raises(ConfigError):
        models.create("resnet20", num_classes=0)


def test_register_model_refuses_taken_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("resnet20")(lambda num_classes=10: nn.Identity())
    with pytest.raises(ValueError, match="torchvision"):
        models.register_model("resnet18")(lambda num_classes=10: nn.Identity())


def test_register_model_custom_entry() -> None:
    name = "_test_tiny_net"

    @models.register_model(name, input_size=(1, 8, 8), num_classes=4)
    def tiny(num_classes: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    try:
        model = models.create(name)
        assert models.default_input_size(name) == (1, 8, 8)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
        assert model.prunelab_arch == {"name": name, "kwargs": {"num_classes": 4}}
    finally:
        registry._REGISTRY.pop(name)


def _count(graph_module: torch.fx.GraphModule, targets: set) -> int:
    return sum(
        node.op == "call_function" and node.target in targets for node in graph_module.graph.nodes
    )


ADDS = {operator.add, torch.add}


@pytest.mark.parametrize(
    ("name", "adds"),
    [("resnet20", 9), ("resnet164", 54), ("wrn28_10", 12), ("cifar_mobilenet_v2", 10)],
)
def test_residuals_are_plain_adds(name: str, adds: int) -> None:
    traced = torch.fx.symbolic_trace(models.create(name))
    assert _count(traced, ADDS) == adds


def test_densenet_concatenates_and_matches_paper_layout() -> None:
    model = models.create("densenet40")
    traced = torch.fx.symbolic_trace(model)
    assert _count(traced, {torch.cat}) == 36
    assert model.fc.in_features == 16 + 3 * 12 * 12
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 36 + 2  # stem, 36 dense layers, 2 transitions
    assert models.create("densenet40", stem_width=24).fc.in_features == 24 + 3 * 12 * 12


def test_resnet_option_b_shortcuts() -> None:
    model = models.create("resnet56")
    shortcut_convs = [
        block.downsample[0]
        for stage in (model.layer1, model.layer2, model.layer3)
        for block in stage
        if block.downsample is not None
    ]
    assert [(c.in_channels, c.out_channels, c.stride) for c in shortcut_convs] == [
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 9


def test_mobilenet_uses_depthwise_convs_and_cifar_strides() -> None:
    model = models.create("cifar_mobilenet_v2")
    depthwise = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]
    assert len(depthwise) == 17
    assert model.conv1.stride == (1, 1)
    # Blocks 1-3 (stages of 16 and 24 channels) keep the resolution.
    assert [b.dw_conv.stride for b in model.blocks[:3]] == [(1, 1)] * 3
    feats = model.blocks(model.conv1(torch.randn(1, 3, 32, 32)))
    assert feats.shape[-2:] == (4, 4)


def test_wrn_dropout_option() -> None:
    model = models.create("wrn28_10", dropout=0.3)
    rates = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.3}
    assert model.layer3[-1].conv2.out_channels == 640


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = models.create("resnet56")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    conv = model.layer3[5].conv1  # 64 out channels, 3x3: fan_out 576
    expected = (2.0 / (64 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
