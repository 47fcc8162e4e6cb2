"""DWR on torchvision's EfficientNet-B0: MBConv blocks (depth), channels (width), resolution."""

from __future__ import annotations

import pytest
import torch

import prunelab
from prunelab.data import build_data
from prunelab.errors import ConfigError
from prunelab.graph.blocks import find_removable_blocks, remove_blocks, zero_branches
from prunelab.methods import PruneTask, get_method
from prunelab.train import TrainConfig
from tests._nets import randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")

# The MBConv blocks with an identity shortcut (stride 1, same width in and out).
MBCONV = ["features.2.1", "features.3.1", "features.4.1", "features.4.2", "features.5.1",
          "features.5.2", "features.6.1", "features.6.2", "features.6.3"]  # fmt: skip


def test_removed_mbconv_blocks_equal_the_model_with_zero_branches() -> None:
    torch.manual_seed(0)
    model = randomize_bn(prunelab.create("efficientnet_b0", num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert [b.name for b in find_removable_blocks(model, x)] == MBCONV
    names = ["features.2.1", "features.5.2", "features.6.3"]
    masked = zero_branches(model, names, x)
    assert not torch.allclose(masked(x), model(x))  # the branches did contribute
    torch.testing.assert_close(remove_blocks(model, names)(x), masked(x), rtol=1e-4, atol=1e-6)


def test_zero_branches_refuses_a_block_without_a_closing_norm() -> None:
    class Add(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(4)
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(self.bn(x))  # the norm is not the branch's last op

    net = torch.nn.Sequential(Add())
    with pytest.raises(ConfigError, match=r"'0'.*does not zero its branch"):
        zero_branches(net, ["0"], torch.randn(1, 4, 5, 5))


@pytest.mark.slow
def test_dwr_prunes_efficientnet_b0_in_depth_width_and_resolution() -> None:
    data = build_data("synthetic", batch_size=16, n_train=96, n_test=32, holdout=32,
                      image_size=32, seed=0)  # fmt: skip
    torch.manual_seed(0)
    model = prunelab.create("efficientnet_b0", num_classes=data.num_classes)
    train = TrainConfig(epochs=1, steps_per_epoch=2, lr=0.02, quiet=True)
    task = PruneTask(model=model, data=data, target=0.5, quiet=True, train=train)
    options = {"rounds": 1, "round_epochs": 1, "final_epochs": 1, "probe_batches": 2,
               "tolerance": 0.02}  # fmt: skip
    result = get_method("dwr")(**options).run(task)
    info = result.info
    assert info["removable_blocks"] == MBCONV
    points = {p["dim"]: p for p in info["points"]}
    assert points["depth"]["blocks_kept"] < 9 and points["width"]["w"] < 1
    assert points["resolution"]["pixels"] < 32
    chosen = info["chosen"]  # the optimum of this run gives up some of every dimension
    assert chosen["blocks_kept"] < 9 and chosen["w"] < 1 and chosen["pixels"] < 32
    removed = info["removed_blocks"]
    assert len(removed) == 9 - chosen["blocks_kept"]
    assert all(isinstance(result.model.get_submodule(n), torch.nn.Identity) for n in removed)
    assert info["masked_vs_pruned_max_diff"] < 1e-4
    size = result.model.prunelab_input_size
    assert size == (3, chosen["pixels"], chosen["pixels"])
    flops = prunelab.count(result.model, torch.zeros(1, *size)).flops
    base = prunelab.count(model, torch.zeros(1, 3, 32, 32)).flops
    assert info["within_tolerance"] and abs(flops / base - 0.5) <= 0.02 * 0.5
