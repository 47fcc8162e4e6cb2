"""Detection models prune as a whole (backbone, FPN, heads) and the pruned model trains."""

from __future__ import annotations

import pytest
import torch

from prunelab.graph import prune, trace
from prunelab.graph.selfcheck import half_plan, randomize_norms
from prunelab.models.torchvision_catalog import build_case, torchvision_cases

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
