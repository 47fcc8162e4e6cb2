"""Detection annotations from a YOLO layout (archive or folder) or a COCO-JSON file.

Every source ends as the same list of `ImageRecord`s per split: the image's
bytes, its boxes as normalised xyxy in [0, 1], labels, and (for instance
segmentation) each instance's polygons in normalised (x, y) points.

YOLO layout (what Ultralytics and lightly-ai's coco128 use):
`images/<split>/<stem>.jpg` with `labels/<split>/<stem>.txt`, one object a
line: `class cx cy w h` (boxes) or `class x1 y1 x2 y2 ...` (polygons), all
normalised; class ids are 0-based unless the data says otherwise (coco128's
instance-segmentation labels use COCO's own 1-90 ids), and label 0 is kept
for torchvision's background, so a 0-based class c becomes label c + 1.
An image without a label file has no objects (boxes), or is skipped
(polygons: YOLO-seg's `skip_if_label_file_missing`).

COCO JSON: `images` (file_name, width, height), `annotations` (bbox xywh
pixels, category_id, polygon `segmentation`), the label is the category id.
Crowd annotations (`iscrowd: 1`, RLE regions) are skipped, in training and
in the ground truth, so mAP on images with crowd regions can be a little
lower than the official evaluation (which ignores detections on them).
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from prunelab.errors import CorruptFileError, DataNotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_PREFIXES = {"train": ("train",), "test": ("val", "test")}


@dataclass
class ImageRecord:
    """One image and its objects; coordinates normalised to the image (0..1)."""

    name: str
    data: bytes
    boxes: np.ndarray  # (n, 4) float32 xyxy
    labels: np.ndarray  # (n,) int64
    polygons: list[list[np.ndarray]] | None = None  # per instance: (k, 2) float32 rings


@dataclass
class DetectionSource:
    """Both splits of a detection data set and its class names (index = label)."""

    train: list[ImageRecord]
    test: list[ImageRecord]
    classes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ------------------------------------------------------------------ file views
def archive_view(archive: Path, base: str | None = None) -> dict[str, bytes]:
    """Files under `base` of a tar(.gz) as {path relative to base: bytes}; symlinks followed.

    `base=None`: the folder that holds the `labels/` folder (the top of the YOLO layout).
    """
    try:
        raw = archive.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        files: dict[str, bytes] = {}
        links: dict[str, str] = {}
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for member in tf:
                name = posixpath.normpath(member.name)
                if member.issym():
                    links[name] = posixpath.normpath(
                        posixpath.join(posixpath.dirname(name), member.linkname))
                elif member.isfile():
                    f = tf.extractfile(member)
                    assert f is not None
                    files[name] = f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise CorruptFileError(f"{archive} is not a readable tar.gz archive: {exc}") from exc
    if base is None:
        tops = sorted({("/" + p).split("/labels/")[0] for p in files if "/labels/" in "/" + p},
                      key=len)
        base = tops[0].lstrip("/") if tops else ""
    base = posixpath.normpath(base) if base else ""
    if not base:
        return files
    view: dict[str, bytes] = {}
    for path, blob in files.items():
        if path.startswith(base + "/"):
            view[path[len(base) + 1:]] = blob
    for link, target in links.items():  # e.g. object_detection/images -> ../images
        if link.startswith(base + "/"):
            rel = link[len(base) + 1:]
            for path, blob in files.items():
                if path.startswith(target + "/"):
                    view[rel + path[len(target):]] = blob
    if not view:
        raise CorruptFileError(f"{archive} holds nothing under {base}/")
    return view


def folder_view(root: Path) -> dict[str, bytes]:
    """The YOLO files of a folder (images/, labels/, *.yaml) as {relative path: bytes}."""
    view: dict[str, bytes] = {}
    for sub in ("images", "labels"):
        top = root / sub
        if not top.is_dir():
            raise DataNotFoundError(f"{root} is not a YOLO data folder: it has no {sub}/ folder")
        for path in sorted(top.rglob("*")):
            if path.is_file():
                view[path.relative_to(root).as_posix()] = path.read_bytes()
    for path in sorted(root.glob("*.yaml")):
        view[path.name] = path.read_bytes()
    return view


# ------------------------------------------------------------------- YOLO text
def parse_yolo_labels(text: str, where: str, polygons: bool, offset: int
                      ) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]] | None]:
    """Boxes, labels (class + offset) and polygons of one label file; bad lines raise."""
    boxes, labels, polys = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, values = int(fields[0]), np.array([float(v) for v in fields[1:]], np.float32)
        except ValueError:
            raise CorruptFileError(f"{where} line {number}: expected numbers, got {line!r}"
                                   ) from None
        if polygons:
            if len(values) < 6 or len(values) % 2:
                raise CorruptFileError(f"{where} line {number}: a polygon needs an even count "
                                       f"of at least 6 coordinates, got {len(values)}")
            ring = values.reshape(-1, 2).clip(0.0, 1.0)
            box = np.concatenate([ring.min(0), ring.max(0)])
            polys.append([ring])
        else:
            if len(values) != 4:
                raise CorruptFileError(f"{where} line {number}: expected 'class cx cy w h' "
                                       f"(5 numbers), got {len(fields)}")
            cx, cy, w, h = values
            box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]).clip(0.0, 1.0)
        if cls + offset < 1 or not np.isfinite(values).all():
            raise CorruptFileError(f"{where} line {number}: bad class id {cls} or coordinates")
        boxes.append(box)
        labels.append(cls + offset)
    return (np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64),
            polys if polygons else None)


def _yaml_names(view: dict[str, bytes]) -> dict[int, str]:
    for path, blob in sorted(view.items()):
        if "/" not in path and path.endswith((".yaml", ".yml")):
            try:
                names = (yaml.safe_load(blob) or {}).get("names")
            except yaml.YAMLError as exc:
                raise CorruptFileError(f"{path}: not valid YAML: {exc}") from exc
            if isinstance(names, list):
                return dict(enumerate(map(str, names)))
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}
    return {}


def _split_dirs(view: dict[str, bytes], split: str, source: str) -> str:
    dirs = sorted({p.split("/")[1] for p in view if p.startswith("images/") and p.count("/") >= 2})
    match = [d for d in dirs if d.lower().startswith(SPLIT_PREFIXES[split])]
    if len(match) != 1:
        raise CorruptFileError(f"{source}: expected one images/{split}*/ folder"
                               f"{' (or val*/test*)' if split == 'test' else ''}, found {match}")
    return match[0]


def yolo_source(view: dict[str, bytes], source: str, *, polygons: bool,
                zero_based: bool = True) -> DetectionSource:
    """Both splits of a YOLO layout (see the module docstring)."""
    offset = 1 if zero_based else 0
    splits: dict[str, list[ImageRecord]] = {}
    for split in ("train", "test"):
        folder = _split_dirs(view, split, source)
        records = []
        for path in sorted(p for p in view if p.startswith(f"images/{folder}/")):
            if not path.lower().endswith(IMAGE_SUFFIXES):
                continue
            stem = posixpath.splitext(path[len(f"images/{folder}/"):])[0]
            label_path = f"labels/{folder}/{stem}.txt"
            text = view.get(label_path)
            if text is None and polygons:
                continue  # YOLO-seg: an image without a label file is not in the set
            try:
                decoded = (text or b"").decode()
            except UnicodeDecodeError:
                raise CorruptFileError(f"{source}: {label_path} is not a text file") from None
            boxes, labels, polys = parse_yolo_labels(decoded, f"{source}: {label_path}",
                                                     polygons, offset)
            records.append(ImageRecord(stem, view[path], boxes, labels, polys))
        if not records:
            raise CorruptFileError(f"{source}: no labelled images in images/{folder}/")
        splits[split] = records
    names = _yaml_names(view)
    top = max([*(k + offset for k in names),
               *(int(r.labels.max()) for rs in splits.values() for r in rs if len(r.labels))])
    classes = ["background"] + [names.get(i - offset, str(i - offset)) for i in range(1, top + 1)]
    return DetectionSource(splits["train"], splits["test"], classes)


# -------------------------------------------------------------------- COCO JSON
def coco_json_split(annotations: Path, images: Path, *, polygons: bool
                    ) -> tuple[list[ImageRecord], dict[int, str]]:
    """The images of one COCO instances file (read from `images`) and its category names."""
    if not annotations.is_file():
        raise DataNotFoundError(f"COCO annotation file not found: {annotations}")
    try:
        doc = json.loads(annotations.read_text())
        infos = {int(im["id"]): im for im in doc["images"]}
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in doc.get("categories", [])}
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in infos}
        for ann in doc["annotations"]:
            per_image[int(ann["image_id"])].append(ann)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{annotations} is not a COCO instances file: "
                               f"{type(exc).__name__}: {exc}") from exc
    records = []
    for image_id, info in sorted(infos.items()):
        path = images / str(info.get("file_name", ""))
        if not path.is_file():
            raise DataNotFoundError(f"{annotations}: image {image_id} not found at {path}")
        try:
            w, h = float(info["width"]), float(info["height"])
            boxes, labels, polys = _coco_objects(per_image[image_id], w, h, polygons)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{annotations}: bad annotation of image {image_id}: "
                                   f"{type(exc).__name__}: {exc}") from exc
        records.append(ImageRecord(str(image_id), path.read_bytes(), boxes, labels, polys))
    return records, names


def _coco_objects(anns: list[dict[str, Any]], w: float, h: float, polygons: bool
                  ) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]] | None]:
    scale = np.array([w, h, w, h], np.float32)
    boxes, labels, polys = [], [], []
    for ann in anns:
        if ann.get("iscrowd", 0):
            continue
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        rings = []
        if polygons:
            seg = ann["segmentation"]
            if not isinstance(seg, list):
                raise ValueError("only polygon segmentations are supported (not RLE)")
            rings = [np.array(r, np.float32).reshape(-1, 2) / scale[:2] for r in seg if len(r) >= 6]
            if not rings:
                continue
        boxes.append(np.array([x, y, x + bw, y + bh], np.float32) / scale)
        labels.append(int(ann["category_id"]))
        polys.append([r.clip(0.0, 1.0) for r in rings])
    return (np.array(boxes, np.float32).reshape(-1, 4).clip(0.0, 1.0),
            np.array(labels, np.int64), polys if polygons else None)


def coco_json_source(train: tuple[Path, Path], test: tuple[Path, Path], *, polygons: bool
                     ) -> DetectionSource:
    """Both splits from (annotations.json, image folder) pairs; label = COCO category id."""
    train_records, names = coco_json_split(*train, polygons=polygons)
    test_records, test_names = coco_json_split(*test, polygons=polygons)
    names = {**test_names, **names}
    top = max([*names, *(int(r.labels.max()) for r in train_records + test_records
                         if len(r.labels))], default=0)
    if top < 1:
        raise CorruptFileError(f"{train[0]}: no categories and no annotations")
    classes = ["background"] + [names.get(i, str(i)) for i in range(1, top + 1)]
    return DetectionSource(train_records, test_records, classes)
