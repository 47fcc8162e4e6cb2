"""Letterboxed detection images in memory, flipped with their boxes and masks.

`letterbox` scales an image so its longer side is `size`, keeping the aspect
ratio, and centres it on a size x size canvas of grey (114, as YOLO pads);
boxes and polygons take the same scale and offset. The data sets decode every
image this way once, so all images of a batch have one size.

`DetectionLoader` yields `(images, targets)`: images a (B, 3, S, S) float
tensor in [0, 1] (torchvision's detection models take it as the list of B
images they iterate over, and normalise it themselves), targets one dict per
image in torchvision's format: "boxes" (n, 4) float xyxy pixels, "labels" (n,)
int64 and, for instance segmentation, "masks" (n, S, S) uint8, rasterised
from the polygons (and mirrored with the image). Training flips each image horizontally
with probability 0.5; the flips of an epoch come from the loader's own
generator, so a checkpoint of its state continues the run exactly.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.path import Path as MplPath
from PIL import Image

from prunelab.data.loader import GeneratorState, ShardedBatches, check_loader_args
from prunelab.errors import ConfigError, CorruptFileError

PAD_VALUE = 114
MIN_BOX_SIDE = 1.0  # pixels: smaller boxes (after letterboxing) are dropped


@dataclass
class Objects:
    """The objects of one letterboxed image, in its pixel coordinates."""

    boxes: np.ndarray  # (n, 4) float32 xyxy
    labels: np.ndarray  # (n,) int64
    polygons: list[list[np.ndarray]] | None = None  # per instance: (k, 2) rings


def letterbox(blob: bytes, size: int, name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """(3, size, size) uint8 image and where the image lies on it: (w, h, x offset, y offset)."""
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / max(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            resized = im.resize((nw, nh), Image.BILINEAR)
    except Exception as exc:  # PIL raises many kinds for broken data
        raise CorruptFileError(f"cannot decode image {name}: {type(exc).__name__}: {exc}"
                               ) from exc
    canvas = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    dx, dy = (size - nw) // 2, (size - nh) // 2
    canvas.paste(resized, (dx, dy))
    return np.asarray(canvas).transpose(2, 0, 1).copy(), (float(nw), float(nh), dx, dy)


def place_objects(boxes: np.ndarray, labels: np.ndarray,
                  polygons: list[list[np.ndarray]] | None, w: float, h: float,
                  dx: float, dy: float) -> Objects:
    """Normalised objects into canvas pixels (image w x h placed at dx, dy); tiny ones dropped."""
    px = boxes * np.array([w, h, w, h], np.float32) + np.array([dx, dy, dx, dy], np.float32)
    keep = ((px[:, 2] - px[:, 0]) >= MIN_BOX_SIDE) & ((px[:, 3] - px[:, 1]) >= MIN_BOX_SIDE)
    polys = None
    if polygons is not None:
        offset = np.array([dx, dy], np.float32)
        polys = [[r * np.array([w, h], np.float32) + offset for r in inst]
                 for inst, k in zip(polygons, keep, strict=True) if k]
    return Objects(px[keep].astype(np.float32), labels[keep], polys)


def rasterize(polygons: list[list[np.ndarray]], size: int) -> torch.Tensor:
    """(n, size, size) uint8 masks: 1 at pixels whose centre lies inside one of the rings.

    Pixel (row i, column j) spans [j, j + 1) x [i, i + 1); only the pixels in
    a ring's bounding box are tested.
    """
    masks = np.zeros((len(polygons), size, size), np.uint8)
    for i, rings in enumerate(polygons):
        for ring in rings:
            lo = np.clip(np.floor(ring.min(0)).astype(int), 0, size)
            hi = np.clip(np.ceil(ring.max(0)).astype(int), 0, size)
            if (hi <= lo).any():
                continue
            xs, ys = np.meshgrid(np.arange(lo[0], hi[0]) + 0.5, np.arange(lo[1], hi[1]) + 0.5)
            inside = MplPath(ring).contains_points(np.stack([xs.ravel(), ys.ravel()], 1))
            masks[i, lo[1]:hi[1], lo[0]:hi[0]] |= inside.reshape(xs.shape).astype(np.uint8)
    return torch.from_numpy(masks)


def flip_objects(obj: Objects, size: int) -> Objects:
    """The objects of the horizontally mirrored image."""
    b = obj.boxes
    boxes = np.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], 1).astype(np.float32)
    polys = None
    if obj.polygons is not None:
        polys = [[np.stack([size - r[:, 0], r[:, 1]], 1) for r in inst] for inst in obj.polygons]
    return Objects(boxes, obj.labels, polys)


def target_of(obj: Objects, size: int, flip: bool = False) -> dict[str, torch.Tensor]:
    """torchvision's target dict of one image (of its mirror image when `flip`).

    A flipped image's masks are the mirrored masks (not re-rasterised mirrored
    polygons), so image, boxes and masks stay exactly aligned.
    """
    boxes = flip_objects(Objects(obj.boxes, obj.labels), size).boxes if flip else obj.boxes
    target = {"boxes": torch.from_numpy(boxes).reshape(-1, 4),
              "labels": torch.from_numpy(obj.labels)}
    if obj.polygons is not None:
        masks = rasterize(obj.polygons, size)
        target["masks"] = masks.flip(-1) if flip else masks
    return target


class DetectionLoader(GeneratorState, ShardedBatches):
    """Iterates ((B, 3, S, S) float images, [target dict] * B) from letterboxed images."""

    resolution: int | None = None  # fixed at decode (the data set's image_size)
    state_kind = "detection"

    def __init__(
        self,
        images: torch.Tensor,
        objects: list[Objects],
        *,
        batch_size: int,
        indices: torch.Tensor | None = None,
        shuffle: bool = False,
        flip: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8 or images.shape[2] != images.shape[3]:
            raise ConfigError(f"images must be (N, 3, S, S) uint8, got {images.dtype} "
                              f"{tuple(images.shape)}")
        check_loader_args(images.shape[0], len(objects), batch_size, "images", "annotations")
        self.images = images
        self.objects = objects
        self.size = int(images.shape[2])
        self.augment = flip
        self._init_order(batch_size, indices, shuffle, drop_last, seed)

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        return self.images.shape[0] if self.indices is None else self.indices.numel()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]:
        draw = (lambda n: {"flip": torch.rand(n, generator=self.generator) < 0.5}
                ) if self.augment else None
        order, draws, stop = self._epoch_order(draw)
        flips = draws.get("flip")
        bs = self.batch_size
        for start in range(0, stop, bs):
            idx = order[start:start + bs]
            x = self.images.index_select(0, idx.to(self.images.device)).float().div_(255.0)
            targets = []
            for j, i in enumerate(idx.tolist()):
                flip = flips is not None and bool(flips[start + j])
                if flip:
                    x[j] = x[j].flip(-1)
                targets.append(target_of(self.objects[i], self.size, flip))
            yield x, targets

    def to(self, device: torch.device | str) -> DetectionLoader:
        self.images = self.images.to(device)
        return self

