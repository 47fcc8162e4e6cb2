"""Detection models prune as a whole (backbone, FPN, heads) and the pruned model trains."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from prunelab import models
from prunelab.graph import prune, trace
from prunelab.graph.selfcheck import check_prunes, half_plan, randomize_norms
from prunelab.metrics import count
from prunelab.models.detection_core import tensor_program
from prunelab.models.torchvision_catalog import build_case, torchvision_cases
from prunelab.report.summary import measure

CASES = {c.name: c for c in torchvision_cases("detection")}


def _targets(size: int, masks: bool) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(2):
        t = {
            "boxes": torch.tensor([[4.0, 6.0, size / 2 + i, size / 2 + 3.0]]),
            "labels": torch.tensor([1 + i]),
        }
        if masks:
            m = torch.zeros(1, size, size, dtype=torch.uint8)
            m[:, 6 : size // 2, 4 : size // 2] = 1
            t["masks"] = m
        out.append(t)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn"])
def test_pruned_detector_trains_one_step_and_detects(name: str) -> None:
    torch.manual_seed(0)
    case = CASES[name]
    model = randomize_norms(build_case(case)).eval()
    size = case.image_size
    graph = trace(model, torch.randn(1, 3, size, size))
    # backbone, FPN (or extra layers) and heads are pruned together
    assert any(g.name.startswith("backbone") for g in graph.prunable)
    assert any("head" in c for g in graph.prunable for c in g.consumers)
    pruned = prune(model, half_plan(graph))
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < before
    pruned.train()
    images = [torch.rand(3, size, size) for _ in range(2)]
    losses = pruned(images, _targets(size, masks=name.startswith("mask")))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    torch.optim.SGD(pruned.parameters(), lr=0.01).step()
    pruned.eval()
    with torch.no_grad():
        detections = pruned(images)
    assert len(detections) == 2 and {"boxes", "labels", "scores"} <= set(detections[0])


def test_maskrcnn_resnet18_fpn_from_the_zoo_prunes_whole_and_masked_equals_pruned() -> None:
    """The CPU-scale Mask R-CNN (torchvision's heads on a ResNet-18-FPN) keeps the contracts."""
    torch.manual_seed(0)
    model = models.create("maskrcnn_resnet18_fpn", num_classes=3, image_size=64)
    assert models.detection_task("maskrcnn_resnet18_fpn") == "instance_segmentation"
    assert model.transform.min_size == (64,) and model.prunelab_input_size == (3, 64, 64)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())  # all trains
    x = torch.randn(2, 3, 64, 64)
    result = check_prunes(randomize_norms(model), x, keep=0.5)
    assert result.passed, result  # raw RPN, box and mask head outputs match; costs counted
    graph = trace(model.eval(), x)
    names = {g.name.split(".")[0] + "." + g.name.split(".")[1] for g in graph.prunable}
    assert {"backbone.body", "backbone.fpn"} <= names
    assert any(c.startswith("roi_heads.mask_head") for g in graph.prunable for c in g.consumers)


@pytest.mark.slow
def test_prune_table_counts_an_rcnn_by_its_tensor_program() -> None:
    """The whole R-CNN's MACs follow its proposals and detections; the table's must not."""
    torch.manual_seed(0)
    model = models.create("maskrcnn_resnet18_fpn", num_classes=3, image_size=64).eval()
    x = torch.zeros(1, 3, 64, 64)
    pruned = prune(model, half_plan(trace(model, x))).eval()
    rows = measure({"dense": model, "pruned": pruned}, {"dense": x, "pruned": x},
                   {"dense": None, "pruned": None}, batch=1, threads=1, repeats=1)
    for row, m in zip(rows, (model, pruned), strict=True):
        assert row.flops == count(tensor_program(m), x).flops
    assert rows[1].flops < 0.5 * rows[0].flops
