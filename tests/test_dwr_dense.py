"""DWR's depth dimension on DenseNet: dense layers removed from the end of their blocks."""

from __future__ import annotations

import pytest
import torch

import prunelab
from prunelab.data import build_data
from prunelab.graph.dense_layers import (
    find_dense_layers,
    removable_tail,
    remove_dense_layers,
    zero_dense_layers,
)
from prunelab.methods import PruneTask, get_method
from prunelab.models.densenet import DenseNet
from prunelab.train import TrainConfig
from tests._nets import randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def _check_removal(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> None:
    pruned = remove_dense_layers(model, names, x)
    masked = zero_dense_layers(model, names, x)
    torch.testing.assert_close(pruned(x), masked(x), rtol=1e-4, atol=1e-5)
    assert all(isinstance(pruned.get_submodule(n), torch.nn.Identity) for n in names)
    back = set(find_dense_layers(pruned))
    assert back == set(find_dense_layers(model)) - set(names)


@pytest.mark.slow
def test_densenet40_without_its_last_dense_layers_equals_the_masked_model() -> None:
    torch.manual_seed(0)
    model = randomize_bn(prunelab.create("densenet40")).eval()
    layers = find_dense_layers(model)
    assert len(layers) == 36 and removable_tail(layers) == ["block1.11", "block2.11", "block3.11"]
    x = torch.randn(2, 3, 32, 32)
    names = ["block1.11", "block1.10", "block3.11"]
    _check_removal(model, names, x)
    pruned = remove_dense_layers(model, names, x)
    assert pruned.trans1.conv.in_channels == 160 - 24 and pruned.fc.in_features == 448 - 12


def test_a_small_densenet_loses_dense_layers_exactly() -> None:
    torch.manual_seed(0)
    model = randomize_bn(DenseNet(depth=13, growth_rate=4)).eval()
    _check_removal(model, ["block2.2", "block2.1", "block3.2"], torch.randn(2, 3, 16, 16))


def test_dwr_prunes_a_densenet_in_all_three_dimensions_removing_block_tails() -> None:
    data = build_data("synthetic", batch_size=16, n_train=96, n_test=32, holdout=32,
                      image_size=16, seed=0)  # fmt: skip
    torch.manual_seed(0)
    model = DenseNet(depth=13, growth_rate=4, num_classes=data.num_classes)
    train = TrainConfig(epochs=1, steps_per_epoch=2, lr=0.02, quiet=True)
    task = PruneTask(model=model, data=data, target=0.5, quiet=True, train=train)
    options = {"rounds": 1, "round_epochs": 1, "final_epochs": 1, "probe_batches": 2}
    result = get_method("dwr")(**options).run(task)
    info = result.info
    assert len(info["removable_blocks"]) == 9  # 3 dense blocks of 3 layers
    assert [p["dim"] for p in info["points"]] == ["origin", "depth", "width", "resolution"]
    depth_point = info["points"][1]
    assert depth_point["blocks_kept"] < 9 and depth_point["d"] < 1
    removed = info["removed_blocks"]
    for block in ("block1", "block2", "block3"):  # each block lost a suffix of its layers
        gone = sorted(int(n.rsplit(".", 1)[1]) for n in removed if n.startswith(block + "."))
        assert gone == list(range(3 - len(gone), 3))
    size = result.model.prunelab_input_size
    flops = prunelab.count(result.model, torch.zeros(1, *size)).flops
    base = prunelab.count(model, torch.zeros(1, 3, 16, 16)).flops
    assert info["within_tolerance"] and abs(flops / base - 0.5) <= 0.03 * 0.5
