"""COCO box mAP through pycocotools on hand-made ground truth with known answers."""

from __future__ import annotations

import pytest
import torch

from prunelab.metrics.detection import coco_box_map

pytest.importorskip("pycocotools")

GT = [{"boxes": torch.tensor([[10.0, 20.0, 110.0, 120.0], [200.0, 50.0, 260.0, 90.0]]),
       "labels": torch.tensor([1, 3]), "width": 320, "height": 240},
      {"boxes": torch.tensor([[0.0, 0.0, 50.0, 80.0]]), "labels": torch.tensor([1]),
       "width": 320, "height": 240}]


def _perfect() -> list[dict]:
    return [{"boxes": g["boxes"].clone(), "labels": g["labels"].clone(),
             "scores": torch.full((len(g["labels"]),), 0.9)} for g in GT]


def test_perfect_predictions_score_one():
    assert coco_box_map(GT, _perfect()) == {"map": pytest.approx(1.0), "map50": pytest.approx(1.0)}


def test_shifted_box_scores_the_thresholds_its_iou_passes():
    gt = [{"boxes": torch.tensor([[0.0, 0.0, 100.0, 100.0]]), "labels": torch.tensor([1])}]
    # shifted right by 20 px: IoU = 80*100 / (120*100) = 2/3, which passes the thresholds
    # 0.50, 0.55, 0.60, 0.65 of the ten 0.50:0.05:0.95 -> mAP 0.4, mAP@.5 1.0
    pred = [{"boxes": torch.tensor([[20.0, 0.0, 120.0, 100.0]]), "labels": torch.tensor([1]),
             "scores": torch.tensor([0.8])}]
    assert coco_box_map(gt, pred) == {"map": pytest.approx(0.4), "map50": pytest.approx(1.0)}
    # IoU 0.45 passes none of them
    pred[0]["boxes"] = torch.tensor([[38.0, 0.0, 138.0, 100.0]])  # IoU 62/138 = 0.449
    assert coco_box_map(gt, pred) == {"map": 0.0, "map50": 0.0}


def test_wrong_class_false_positives_and_missing_predictions_lower_the_map():
    wrong = _perfect()
    wrong[0]["labels"] = torch.tensor([1, 2])  # the class-3 box predicted as class 2
    # class 1: perfect (AP 1); class 3: missed (AP 0); class 2 has no ground truth (ignored)
    assert coco_box_map(GT, wrong)["map"] == pytest.approx(0.5)
    assert coco_box_map(GT, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0),
                              "scores": torch.zeros(0)}] * 2) == {"map": 0.0, "map50": 0.0}
    with pytest.raises(ValueError, match="prediction entries"):
        coco_box_map(GT, _perfect()[:1])
