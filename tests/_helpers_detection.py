"""A tiny detection data set on disk (YOLO layout) and a tiny SSD-lite for task tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from prunelab import models
from prunelab.data import build_data

SIZE = 64


def tiny_yolo_folder(root: Path, n_train: int = 4, n_val: int = 2, masks: bool = False,
                     seed: int = 0) -> Path:
    """Images with one or two bright rectangles each, labelled by colour (classes 0, 1)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((SIZE, SIZE, 3), 40, np.uint8)
            lines = []
            for _ in range(1 + i % 2):
                cls = int(rng.integers(0, 2))
                w, h = rng.uniform(0.25, 0.5, 2)
                cx, cy = rng.uniform(0.3, 0.7, 2)
                x0, y0, x1, y1 = (np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                                  * SIZE).astype(int)
                img[y0:y1, x0:x1] = (230, 30, 30) if cls == 0 else (30, 30, 230)
                if masks:
                    ring = [cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2, cx + w / 2,
                            cy + h / 2, cx - w / 2, cy + h / 2]
                    lines.append(f"{cls} " + " ".join(f"{v:.4f}" for v in ring))
                else:
                    lines.append(f"{cls} {cx:.4f} {cy:.4f} {w:.4f} {h:.4f}")
            Image.fromarray(img).save(root / "images" / split / f"{i:03d}.png")
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_detection_data(root: Path, masks: bool = False, **kw):
    kw = {"batch_size": 2, "eval_batch_size": 2, "augment": False, **kw}
    return build_data("yolo", root=tiny_yolo_folder(root, masks=masks), image_size=SIZE,
                      masks=masks, **kw)


def tiny_ssd(num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("ssdlite320_mobilenet_v3_large", num_classes=num_classes,
                         image_size=SIZE)
