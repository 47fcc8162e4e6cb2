"""COCO box mAP, computed by pycocotools (the reference implementation users trust).

    coco_box_map(ground_truth, predictions) -> {"map": mAP@[.5:.95], "map50": mAP@.5}

Both arguments are one entry per image, in the same order: ground truth
`{"boxes": (n, 4) xyxy pixels, "labels": (n,)}` (optionally "width", "height",
"iscrowd"), predictions `{"boxes", "scores", "labels"}`. They are converted
to COCO's JSON structures in memory (xywh boxes, area = w * h, image ids
1..N) and scored with `COCOeval` exactly as the COCO server does. Values are
fractions in [0, 1]; images without ground truth still count their false
positives. pycocotools is an optional dependency (`pip install
prunelab[detection]`); without it this raises one clear error.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import torch

from prunelab.errors import ConfigError


def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise ConfigError("COCO mAP needs pycocotools: pip install 'prunelab[detection]' "
                          "(or pip install pycocotools)") from exc
    return COCO, COCOeval


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()


def coco_box_map(
    ground_truth: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """mAP@[.5:.95] ("map") and mAP@.5 ("map50") of box predictions, via pycocotools."""
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth images but "
                         f"{len(predictions)} prediction entries")
    COCO, COCOeval = _pycocotools()
    images, annotations, detections, categories = [], [], [], set()
    for i, (gt, pred) in enumerate(zip(ground_truth, predictions, strict=True), start=1):
        boxes = _xywh(gt["boxes"])
        labels = torch.as_tensor(gt["labels"]).reshape(-1).tolist()
        crowd = torch.as_tensor(gt.get("iscrowd", [0] * len(labels))).reshape(-1).tolist()
        images.append({"id": i, "width": int(gt.get("width", 0)),
                       "height": int(gt.get("height", 0))})
        for box, label, c in zip(boxes, labels, crowd, strict=True):
            categories.add(int(label))
            annotations.append({"id": len(annotations) + 1, "image_id": i,
                                "category_id": int(label), "bbox": box, "area": box[2] * box[3],
                                "iscrowd": int(c)})
        scores = torch.as_tensor(pred["scores"]).reshape(-1).tolist()
        for box, score, label in zip(_xywh(pred["boxes"]), scores,
                                     torch.as_tensor(pred["labels"]).reshape(-1).tolist(),
                                     strict=True):
            detections.append({"image_id": i, "category_id": int(label), "bbox": box,
                               "score": float(score)})
    if not annotations:
        raise ValueError("COCO mAP needs at least one ground-truth box")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt_api = COCO()
        gt_api.dataset = {"info": {}, "images": images, "annotations": annotations,
                          "categories": [{"id": c} for c in sorted(categories)]}
        gt_api.createIndex()
        if not detections:
            return {"map": 0.0, "map50": 0.0}
        dt_api = gt_api.loadRes(detections)
        ev = COCOeval(gt_api, dt_api, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [0.0 if s < 0 or math.isnan(s) else float(s) for s in ev.stats[:2]]
    return {"map": stats[0], "map50": stats[1]}
