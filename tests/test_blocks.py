"""Block removal (depth pruning): which blocks are removable, and identity replaces them exactly."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import prunelab
from prunelab.errors import ConfigError
from prunelab.graph.blocks import analyze_block, find_removable_blocks, remove_blocks
from tests._nets import randomize_bn


def _zero_branch(block: nn.Module, last_bn: str) -> None:
    """Make a residual block's branch output exactly zero (its last BN scale and shift)."""
    bn = block.get_submodule(last_bn)
    bn.weight.data.zero_()
    bn.bias.data.zero_()


@torch.no_grad()
def _same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    a.eval()
    b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-5)


def test_cifar_resnet_blocks_with_identity_shortcuts_are_found() -> None:
    model = prunelab.create("resnet20")
    x = torch.randn(2, 3, 32, 32)
    blocks = find_removable_blocks(model, x)
    names = [b.name for b in blocks]
    # The first block of stages 2 and 3 changes shape (1x1 conv shortcut): not removable.
    assert names == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1",
                     "layer3.2"]  # fmt: skip
    assert all(b.post == "relu" and b.exact for b in blocks)


def test_removed_block_equals_model_built_without_it() -> None:
    model = randomize_bn(prunelab.create("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    removed = remove_blocks(model, ["layer2.1"])
    rebuilt = copy.deepcopy(model)
    rebuilt.layer2 = nn.Sequential(model.layer2[0], model.layer2[2])
    _same(removed, rebuilt, x)
    assert isinstance(removed.layer2[1], nn.Identity)
    assert not isinstance(model.layer2[1], nn.Identity)  # the original is untouched


def test_identity_equals_zero_branch_for_post_relu_blocks() -> None:
    # relu(x + 0) = x because a block's input is a ReLU output: identity is exact.
    model = randomize_bn(prunelab.create("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    zeroed = copy.deepcopy(model)
    _zero_branch(zeroed.layer1[1], "bn2")
    _same(zeroed, remove_blocks(model, ["layer1.1"]), x)


def test_torchvision_resnet_and_mobilenet_blocks() -> None:
    x = torch.randn(1, 3, 64, 64)
    resnet = randomize_bn(torchvision.models.resnet18(num_classes=10))
    names = [b.name for b in find_removable_blocks(resnet, x)]
    assert names == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    zeroed = copy.deepcopy(resnet)
    _zero_branch(zeroed.layer3[1], "bn2")
    _same(zeroed, remove_blocks(resnet, ["layer3.1"]), x)

    mobile = randomize_bn(torchvision.models.mobilenet_v2(num_classes=10))
    blocks = find_removable_blocks(mobile, x)
    assert "features.3" in [b.name for b in blocks] and "features.2" not in [b.name for b in blocks]
    assert all(b.post is None and b.exact for b in blocks)  # linear bottleneck: x + f(x)
    rebuilt = copy.deepcopy(mobile)
    rebuilt.features = nn.Sequential(*[m for i, m in enumerate(mobile.features) if i != 3])
    _same(remove_blocks(mobile, ["features.3"]), rebuilt, x)


def test_zoo_mobilenet_and_wide_resnet_identity_is_exact() -> None:
    x = torch.randn(1, 3, 32, 32)
    mobile = randomize_bn(prunelab.create("cifar_mobilenet_v2"))
    zeroed = copy.deepcopy(mobile)
    _zero_branch(zeroed.blocks[2], "project_bn")
    _same(zeroed, remove_blocks(mobile, ["blocks.2"]), x)
    # Pre-activation Wide ResNet blocks end in a plain add: x + conv(...).
    assert "layer1.1" in [b.name for b in find_removable_blocks(prunelab.create("wrn28_10"))]


def test_unremovable_or_missing_block_is_a_clear_error() -> None:
    model = prunelab.create("resnet20")
    with pytest.raises(ConfigError, match=r"layer2\.0.*shortcut is not the identity"):
        remove_blocks(model, ["layer1.1", "layer2.0"])
    assert not isinstance(model.layer1[1], nn.Identity)  # nothing changed, even in place
    with pytest.raises(ConfigError, match=r"no module named 'layer9\.1'"):
        remove_blocks(model, ["layer9.1"])
    with pytest.raises(ConfigError, match="not a removable block"):
        remove_blocks(model, ["layer1.1.conv1"])
    removed = remove_blocks(model, ["layer1.1"])
    with pytest.raises(ConfigError, match="already removed"):
        remove_blocks(removed, ["layer1.1"])
    assert analyze_block(model.layer3[0])[1]  # a reason is given


def test_removable_flag_checks_nonnegative_input_for_post_relu() -> None:
    class PostRelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.conv(x))

    net = nn.Sequential(nn.Conv2d(3, 4, 1), PostRelu(), nn.Flatten())
    (block,) = find_removable_blocks(net, torch.randn(2, 3, 4, 4))
    assert block.name == "1" and block.post == "relu" and block.exact is False


def test_depth_pruned_model_traces_prunes_counts_and_round_trips(tmp_path) -> None:
    model = randomize_bn(prunelab.create("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    dense = prunelab.count(model, x)
    small = remove_blocks(model, ["layer1.0", "layer3.2"])
    cost = prunelab.count(small, x)
    per_block = dense.by_module["layer1.0.conv1"] + dense.by_module["layer1.0.conv2"]
    per_block += dense.by_module["layer3.2.conv1"] + dense.by_module["layer3.2.conv2"]
    assert cost.flops == dense.flops - per_block
    # Other input sizes still run, and width pruning works on top of depth pruning.
    assert small(torch.randn(1, 3, 24, 24)).shape == (1, 10)
    graph = prunelab.trace(small, x)
    thin = prunelab.prune(small, prunelab.planners.uniform(small, graph, 0.5, "bn_scale"))
    assert thin(x).shape == (2, 10)
    prunelab.save(thin, tmp_path / "m.pt")
    back = prunelab.load(tmp_path / "m.pt")
    assert isinstance(back.layer1[0], nn.Identity)
    _same(thin, back, x)
