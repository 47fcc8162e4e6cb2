"""Batch norms folded into convolutions: same outputs, no foldable norm left."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunelab
from prunelab.deploy import fold_batch_norms
from tests._contract import assert_close_rel
from tests._nets import randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("name", "size", "left"),
    [("resnet20", 32, 0), ("cifar_mobilenet_v2", 32, 0), ("densenet40", 32, 39),
     ("resnet18", 64, 0), ("efficientnet_b0", 64, 0)],
)  # fmt: skip
def test_folded_model_computes_the_same_and_keeps_only_unfoldable_norms(
    name: str, size: int, left: int
) -> None:
    torch.manual_seed(0)
    model = randomize_bn(prunelab.create(name, num_classes=10)).eval()
    x = torch.randn(2, 3, size, size)
    folded = fold_batch_norms(model)
    with torch.no_grad():
        assert_close_rel(model(x), folded(x), rtol=1e-5)
    # densenet's norms read concatenations (or a conv that also feeds one): all 39 stay
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == left
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) >= max(left, 1)


def test_folding_a_pruned_model_keeps_its_outputs() -> None:
    torch.manual_seed(0)
    model = randomize_bn(prunelab.create("resnet20")).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = prunelab.trace(model, x[:1])
    small = prunelab.prune(model, prunelab.planners.for_cost(model, graph, 0.5, round_to=8))
    with torch.no_grad():
        assert_close_rel(small.eval()(x), fold_batch_norms(small)(x), rtol=1e-5)


def test_a_shared_convolution_is_not_folded() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) + self.conv(x)

    model = randomize_bn(Shared()).eval()
    folded = fold_batch_norms(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), folded(x))
