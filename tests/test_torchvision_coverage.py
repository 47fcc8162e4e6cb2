"""Every torchvision classification, segmentation and detection model prunes, or is refused.

A model that prunes holds the engine's contracts at ~50% of every group (masked
== pruned outputs, planned cost == counted cost). A model in REFUSED must be
refused with one UnsupportedModelError that names the op it stops at; a refused
model that starts to prune fails here too, so the list (and the counts in the
README, from bench/model_coverage.py) cannot go stale.
"""

from __future__ import annotations

import pytest
import torch

from prunelab.graph.selfcheck import check_prunes, randomize_norms
from prunelab.models.torchvision_catalog import TorchvisionCase, build_case, torchvision_cases
from tests._coverage import assert_prunes_or_is_refused

# model -> the op its refusal must name
REFUSED: dict[str, str] = {}
_SLOW = {
    "regnet_y_128gf", "regnet_y_32gf", "vit_h_14", "vit_l_32", "wide_resnet101_2", "swin_b",
    "maxvit_t",
}  # fmt: skip


def _param(case: TorchvisionCase) -> object:
    slow = case.name in _SLOW or case.task == "detection"
    return pytest.param(case, id=case.name, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("case", [_param(c) for c in torchvision_cases()])
def test_model_prunes_or_is_refused_clearly(case: TorchvisionCase) -> None:
    torch.manual_seed(0)
    model = randomize_norms(build_case(case))
    x = torch.randn(case.batch, 3, case.image_size, case.image_size)
    result = check_prunes(model, x, flops_ratio=False, copy_model=False)
    assert_prunes_or_is_refused(case.name, result, REFUSED)
