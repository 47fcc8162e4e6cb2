"""COCO box mAP, computed by pycocotools (the reference implementation users trust).

    coco_box_map(ground_truth, predictions) -> {"map": mAP@[.5:.95], "map50": mAP@.5}
    coco_mask_map(ground_truth, predictions) -> the same for instance masks

Both arguments are one entry per image, in the same order: ground truth
`{"boxes": (n, 4) xyxy pixels, "labels": (n,)}` (optionally "width", "height",
"iscrowd"), predictions `{"boxes", "scores", "labels"}`. They are converted
to COCO's JSON structures in memory (xywh boxes, area = w * h, image ids
1..N) and scored with `COCOeval` exactly as the COCO server does. Values are
fractions in [0, 1]; images without ground truth still count their false
positives. For masks, both also carry "masks": (n, H, W) binary (or
probabilities, cut at 0.5; Mask R-CNN's (n, 1, H, W) is accepted), encoded
as COCO run-length masks. pycocotools is an optional dependency (`pip install
prunelab[detection]`); without it this raises one clear error.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
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


def _rle(masks: Any) -> list[dict[str, Any]]:
    """COCO run-length encodings of (n, H, W) masks (probabilities are cut at 0.5)."""
    from pycocotools import mask as mask_utils

    m = torch.as_tensor(masks)
    if m.dim() == 4:  # Mask R-CNN predicts (n, 1, H, W)
        m = m[:, 0]
    binary = (m > 0.5) if m.is_floating_point() else (m > 0)
    arr = binary.to(torch.uint8).cpu().numpy()
    rles = mask_utils.encode(np.asfortranarray(arr.transpose(1, 2, 0))) if len(arr) else []
    for r in rles:
        r["counts"] = r["counts"].decode()
    return list(rles)


def coco_box_map(
    ground_truth: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """mAP@[.5:.95] ("map") and mAP@.5 ("map50") of box predictions, via pycocotools."""
    return coco_map(ground_truth, predictions, "bbox")


def coco_mask_map(
    ground_truth: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Mask mAP@[.5:.95] and mAP@.5: entries also carry "masks" (n, H, W), via pycocotools."""
    return coco_map(ground_truth, predictions, "segm")


def coco_map(
    ground_truth: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]],
    iou_type: str = "bbox",
) -> dict[str, float]:
    """COCOeval's mAP@[.5:.95] and mAP@.5 for `iou_type` "bbox" or "segm"."""
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth images but "
                         f"{len(predictions)} prediction entries")
    COCO, COCOeval = _pycocotools()
    segm = iou_type == "segm"
    images, annotations, detections, categories = [], [], [], set()
    for i, (gt, pred) in enumerate(zip(ground_truth, predictions, strict=True), start=1):
        boxes = _xywh(gt["boxes"])
        labels = torch.as_tensor(gt["labels"]).reshape(-1).tolist()
        crowd = torch.as_tensor(gt.get("iscrowd", [0] * len(labels))).reshape(-1).tolist()
        height, width = _size(gt) if segm else (int(gt.get("height", 0)), int(gt.get("width", 0)))
        images.append({"id": i, "width": width, "height": height})
        gt_rles = _rle(gt["masks"]) if segm else [None] * len(labels)
        for box, label, c, rle in zip(boxes, labels, crowd, gt_rles, strict=True):
            categories.add(int(label))
            ann = {"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                   "bbox": box, "area": box[2] * box[3], "iscrowd": int(c)}
            if segm:
                ann["segmentation"] = rle
                ann["area"] = float(_area(rle))
            annotations.append(ann)
        scores = torch.as_tensor(pred["scores"]).reshape(-1).tolist()
        pred_rles = _rle(pred["masks"]) if segm else [None] * len(scores)
        for box, score, label, rle in zip(_xywh(pred["boxes"]), scores,
                                          torch.as_tensor(pred["labels"]).reshape(-1).tolist(),
                                          pred_rles, strict=True):
            det = {"image_id": i, "category_id": int(label), "bbox": box, "score": float(score)}
            if segm:
                det["segmentation"] = rle
            detections.append(det)
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
        ev = COCOeval(gt_api, dt_api, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [0.0 if s < 0 or math.isnan(s) else float(s) for s in ev.stats[:2]]
    return {"map": stats[0], "map50": stats[1]}


def _size(gt: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of an image from its masks (segm needs it for the RLEs)."""
    shape = torch.as_tensor(gt["masks"]).shape
    return int(shape[-2]), int(shape[-1])


def _area(rle: dict[str, Any]) -> float:
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(rle))
