"""Detection and instance-segmentation data sets: COCO128, any YOLO layout, any COCO JSON.

Names (all decode every image once, letterboxed to `image_size`, see
detection_loader.py; the bundle's `task` tells the Trainer what to train):

- `coco128` / `coco128_seg`: $PRUNELAB_DATA/coco128.tar.gz (sha256 checked),
  boxes of the 80 detection classes (labels 1-80) / boxes and masks with
  COCO's category ids (1-90, of the 100 + 100 images that have polygons).
  Train on train2017, evaluate on val2017. The decoded images and
  annotations are cached, keyed by the archive's checksum and the size.
- `yolo`: root = a folder or tar.gz in the YOLO layout (`images/<split>/`,
  `labels/<split>/`, optional `*.yaml` with `names`), `masks=True` for
  polygon labels.
- `coco_json`: `train_annotations`/`val_annotations` (COCO instances JSON)
  with `train_images`/`val_images` folders; `masks=True` for polygons.

These are in-memory data sets for small detection sets (hundreds to a few
thousand images), not a streaming COCO-2017 loader.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab.atomic import atomic_write_bytes
from prunelab.data.archive import verified_sha256
from prunelab.data.arrays import atomic_save_npy, cache_root, data_root
from prunelab.data.detection_loader import DetectionLoader, Objects, letterbox, place_objects
from prunelab.data.detection_source import (
    DetectionSource,
    ImageRecord,
    archive_view,
    coco_json_source,
    folder_view,
    yolo_source,
)
from prunelab.data.registry import DataBundle, _rank0_first, register_data, split_holdout
from prunelab.errors import ConfigError, CorruptFileError, DataNotFoundError

COCO128_NAME = "coco128.tar.gz"
COCO128_SHA256 = "478e52c13d83213e78c3339c33656bb71320de075b2ff9b280d7d5a493a665b8"
_CACHE_FORMAT = 1


class DecodedSplit:
    """Letterboxed uint8 images (N, 3, S, S) and their objects in canvas pixels."""

    def __init__(self, images: np.ndarray, objects: list[Objects]) -> None:
        self.images = images
        self.objects = objects


def decode_split(records: list[ImageRecord], size: int, source: str) -> DecodedSplit:
    """Letterbox every image of a split and place its objects on the canvas."""
    if size < 32:
        raise ConfigError(f"image_size must be at least 32 pixels, got {size}")
    images = np.empty((len(records), 3, size, size), np.uint8)
    objects = []
    for i, rec in enumerate(records):
        images[i], (w, h, dx, dy) = letterbox(rec.data, size, f"{source}: {rec.name}")
        objects.append(place_objects(rec.boxes, rec.labels, rec.polygons, w, h, dx, dy))
    return DecodedSplit(images, objects)


# ----------------------------------------------------------------------- cache
def _objects_json(objects: list[Objects]) -> list[dict[str, Any]]:
    return [{"boxes": o.boxes.tolist(), "labels": o.labels.tolist(),
             "polygons": None if o.polygons is None else
             [[r.tolist() for r in inst] for inst in o.polygons]} for o in objects]


def _objects_from_json(items: list[dict[str, Any]]) -> list[Objects]:
    return [Objects(np.array(d["boxes"], np.float32).reshape(-1, 4),
                    np.array(d["labels"], np.int64),
                    None if d["polygons"] is None else
                    [[np.array(r, np.float32).reshape(-1, 2) for r in inst]
                     for inst in d["polygons"]]) for d in items]


def _write_cache(folder: Path, splits: dict[str, DecodedSplit], classes: list[str]) -> None:
    for name, split in splits.items():
        atomic_save_npy(folder / f"{name}_images.npy", split.images)
    meta = {"format": _CACHE_FORMAT, "classes": classes,
            **{name: _objects_json(split.objects) for name, split in splits.items()}}
    data = json.dumps(meta).encode()
    atomic_write_bytes(folder / "meta.json", lambda f: f.write(data))  # last: marks complete


def _read_cache(folder: Path) -> tuple[dict[str, DecodedSplit], list[str]] | None:
    if not (folder / "meta.json").exists():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        splits = {}
        for name in ("train", "test"):
            images = np.load(folder / f"{name}_images.npy", allow_pickle=False)
            objects = _objects_from_json(meta[name])
            if meta["format"] != _CACHE_FORMAT or len(objects) != images.shape[0]:
                raise ValueError("images and annotations disagree")
            splits[name] = DecodedSplit(images, objects)
        return splits, list(meta["classes"])
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise CorruptFileError(f"decoded cache in {folder} is truncated or damaged ({exc}); "
                               f"delete that folder to decode the archive again") from exc


def decode_source(source: DetectionSource, size: int, where: str) -> dict[str, DecodedSplit]:
    return {"train": decode_split(source.train, size, where),
            "test": decode_split(source.test, size, where)}


def load_coco128(root: Path, *, masks: bool, image_size: int, sha256: str | None,
                 cache_dir: str | os.PathLike[str] | None
                 ) -> tuple[dict[str, DecodedSplit], list[str]]:
    """COCO128 boxes (or boxes and masks), verified, decoded once and cached."""
    archive = Path(root) / COCO128_NAME
    if not archive.is_file():
        raise DataNotFoundError(f"COCO128 archive not found: looked for {archive}")
    digest = verified_sha256(archive, sha256)
    kind = "seg" if masks else "det"
    folder = cache_root(cache_dir) / f"coco128-{digest[:16]}-{kind}-s{image_size}"
    cached = _read_cache(folder)
    if cached is not None:
        return cached
    base = "coco128/instance_segmentation" if masks else "coco128/object_detection"
    source = yolo_source(archive_view(archive, base), str(archive), polygons=masks,
                         zero_based=not masks)  # the seg labels carry COCO's 1-90 ids
    splits = decode_source(source, image_size, str(archive))
    with contextlib.suppress(OSError):  # read-only cache: still usable, decoded again next time
        _write_cache(folder, splits, source.classes)
    return splits, source.classes


# ---------------------------------------------------------------------- bundle
class DetectionBundle(DataBundle):
    """A DataBundle of letterboxed detection images: input (3, S, S), fixed at decode."""

    def __init__(self, *args: Any, task: str, **kwargs: Any) -> None:
        self.task = task
        super().__init__(*args, **kwargs)

    def set_resolution(self, resolution: int | None) -> None:
        if resolution is not None and resolution != self.input_size[1]:
            raise ConfigError(f"{self.name}: images are letterboxed to data.image_size="
                              f"{self.input_size[1]} when decoded; set image_size, "
                              f"not resolution")

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["augment"] = "flip" if self.train.augment else False  # type: ignore[attr-defined]
        info.pop("cutout", None)
        info["task"] = self.task
        return info


def bundle_from_splits(name: str, splits: dict[str, DecodedSplit], classes: list[str], *,
                       masks: bool, kw: dict[str, Any]) -> DetectionBundle:
    if kw["cutout"]:
        raise ConfigError(f"{name}: cutout is an image-classification augmentation; "
                          f"detection uses flips")
    train, test = splits["train"], splits["test"]
    images = torch.from_numpy(train.images)
    train_idx = hold = None
    if kw["holdout"]:
        train_idx, hold_idx = split_holdout(images.shape[0], kw["holdout"], kw["seed"])
        hold = DetectionLoader(images, train.objects, batch_size=kw["eval_batch_size"],
                               indices=hold_idx)
    train_loader = DetectionLoader(images, train.objects, batch_size=kw["batch_size"],
                                   indices=train_idx, shuffle=True, flip=kw["augment"],
                                   drop_last=kw["drop_last"], seed=kw["seed"])
    test_loader = DetectionLoader(torch.from_numpy(test.images), test.objects,
                                  batch_size=kw["eval_batch_size"])
    size = int(train.images.shape[2])
    return DetectionBundle(
        name, train_loader, test_loader, num_classes=len(classes),  # type: ignore[arg-type]
        input_size=(3, size, size), mean=(0.0,) * 3, std=(1.0,) * 3, classes=classes,
        holdout=hold, task="instance_segmentation" if masks else "detection")  # type: ignore[arg-type]


def _coco128(masks: bool, image_size: int, sha256: str | None, cache_dir: str | None,
             kw: dict[str, Any]) -> DetectionBundle:
    root = data_root(kw["root"])
    with _rank0_first():
        splits, classes = load_coco128(root, masks=masks, image_size=image_size, sha256=sha256,
                                       cache_dir=cache_dir)
    return bundle_from_splits("coco128_seg" if masks else "coco128", splits, classes,
                              masks=masks, kw=kw)


@register_data("coco128")
def _coco128_boxes(*, image_size: int = 320, sha256: str | None = COCO128_SHA256,
                   cache_dir: str | None = None, **kw: Any) -> DetectionBundle:
    return _coco128(False, image_size, sha256, cache_dir, kw)


@register_data("coco128_seg")
def _coco128_masks(*, image_size: int = 320, sha256: str | None = COCO128_SHA256,
                   cache_dir: str | None = None, **kw: Any) -> DetectionBundle:
    return _coco128(True, image_size, sha256, cache_dir, kw)


@register_data("yolo")
def _yolo(*, image_size: int = 320, masks: bool = False, zero_based: bool = True,
          **kw: Any) -> DetectionBundle:
    if kw["root"] is None:
        raise ConfigError("yolo needs root=<folder or .tar.gz with images/<split>/ and "
                          "labels/<split>/>")
    root = Path(kw["root"])
    if root.is_dir():
        view = folder_view(root)
    elif root.is_file():
        view = archive_view(root)
    else:
        raise DataNotFoundError(f"YOLO data not found: looked for {root}")
    source = yolo_source(view, str(root), polygons=masks, zero_based=zero_based)
    return bundle_from_splits("yolo", decode_source(source, image_size, str(root)),
                              source.classes, masks=masks, kw=kw)


@register_data("coco_json")
def _coco_json(*, train_annotations: str = "", val_annotations: str = "",
               train_images: str = "", val_images: str = "", image_size: int = 320,
               masks: bool = False, **kw: Any) -> DetectionBundle:
    given = (train_annotations, val_annotations, train_images, val_images)
    if not all(given):
        raise ConfigError("coco_json needs data.train_annotations, val_annotations, "
                          "train_images and val_images")
    source = coco_json_source((Path(train_annotations), Path(train_images)),
                              (Path(val_annotations), Path(val_images)), polygons=masks)
    return bundle_from_splits("coco_json", decode_source(source, image_size, train_annotations),
                              source.classes, masks=masks, kw=kw)
