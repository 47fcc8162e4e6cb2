"""Detection data: YOLO folders/archives, COCO JSON, COCO128, letterbox, flips, masks, errors."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunelab.data import build_data
from prunelab.data.detection_loader import Objects, flip_objects, rasterize
from prunelab.errors import ConfigError, CorruptFileError

# an 80x40 image: letterboxed to 64 it is scaled by 0.8 to 64x32, placed at y offset 16
W, H, S = 80, 40, 64


def _png(w: int = W, h: int = H) -> bytes:
    buf = io.BytesIO()
    ramp = np.broadcast_to(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, w, 3))
    Image.fromarray(np.ascontiguousarray(ramp)).save(buf, format="PNG")  # not mirror-symmetric
    return buf.getvalue()


def _yolo_folder(root: Path, lines: dict[str, str], polygons: bool = False) -> Path:
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for name in names:
            (root / "images" / split / f"{name}.png").write_bytes(_png())
            if name in lines:
                (root / "labels" / split / f"{name}.txt").write_text(lines[name])
    (root / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    return root


BOX_LINES = {"a": "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.1 0.2\n", "c": "1 0.5 0.5 1.0 1.0\n"}


def test_yolo_folder_letterboxes_boxes_and_keeps_label_zero_for_background(tmp_path: Path
                                                                           ) -> None:
    data = build_data("yolo", root=_yolo_folder(tmp_path, BOX_LINES), image_size=S,
                      batch_size=2, augment=False, eval_batch_size=1)
    assert data.task == "detection" and data.classes == ["background", "cat", "dog"]
    assert data.num_classes == 3 and data.effective_input_size == (3, S, S)
    x, targets = next(iter(data.test))
    assert x.shape == (1, 3, S, S) and x.dtype == torch.float32 and float(x.max()) <= 1.0
    # the whole 80x40 image: 64x32 pixels at y = 16
    assert torch.allclose(targets[0]["boxes"], torch.tensor([[0.0, 16.0, 64.0, 48.0]]))
    assert targets[0]["labels"].tolist() == [2]
    train = {len(t["labels"]): t for _, ts in data.train for t in ts}
    assert sorted(train) == [0, 2]  # "b" has no label file: no objects
    assert torch.allclose(train[2]["boxes"][0], torch.tensor([16.0, 24.0, 48.0, 40.0]))
    assert train[0]["boxes"].shape == (0, 4)


def test_flip_mirrors_image_boxes_and_masks(tmp_path: Path) -> None:
    square = "0 0.1 0.2 0.4 0.2 0.4 0.6 0.1 0.6\n"  # x 0.1..0.4, y 0.2..0.6
    root = _yolo_folder(tmp_path, {"a": square, "b": square, "c": square})
    kw = {"root": root, "image_size": S, "masks": True, "batch_size": 1, "drop_last": False}
    plain = build_data("yolo", augment=False, **kw)
    flipped = build_data("yolo", augment=True, **kw)
    mirrored = kept = 0
    pairs = [p for _ in range(5) for p in zip(plain.train, flipped.train, strict=True)]
    for (x0, t0), (x1, t1) in pairs:
        box, mask = t0[0]["boxes"][0], t0[0]["masks"][0]
        # the rasterised mask fills the polygon's box (64x32 image at y 16)
        assert torch.allclose(box, torch.tensor([6.4, 22.4, 25.6, 35.2]), atol=1e-4)
        assert mask.sum() > 0.8 * (25.6 - 6.4) * (35.2 - 22.4)
        assert mask[:, :6].sum() == 0 and mask[:, 27:].sum() == 0
        if not torch.equal(x0, x1):
            mirrored += 1
            assert torch.equal(x1, x0.flip(-1))
            assert torch.allclose(t1[0]["boxes"][0], torch.tensor([S - 25.6, 22.4, S - 6.4, 35.2]),
                                  atol=1e-4)
            assert torch.equal(t1[0]["masks"], t0[0]["masks"].flip(-1))
        else:
            kept += 1
            assert torch.equal(t1[0]["boxes"], t0[0]["boxes"])
    assert mirrored and kept  # 10 draws of p = 0.5 (fixed seed)
    obj = Objects(np.array([[1.0, 2.0, 5.0, 9.0]], np.float32), np.array([1]),
                  [[np.array([[1, 2], [5, 2], [5, 9], [1, 9]], np.float32)]])
    back = flip_objects(flip_objects(obj, S), S)
    assert np.allclose(back.boxes, obj.boxes)
    mask = rasterize(obj.polygons, S)[0]  # pixels 1..4 by 2..8: the box's pixel centres
    assert mask.sum() == 4 * 7 and mask[2:9, 1:5].all()


def test_loader_state_continues_the_same_order_and_flips(tmp_path: Path) -> None:
    data = build_data("yolo", root=_yolo_folder(tmp_path, BOX_LINES), image_size=S,
                      batch_size=1, drop_last=False, seed=3)
    next(iter(data.train))  # one epoch's draw
    state = data.train.state_dict()
    a = [(x, t) for x, t in data.train]
    data.train.load_state_dict(state)
    b = [(x, t) for x, t in data.train]
    for (xa, ta), (xb, tb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ta[0]["boxes"], tb[0]["boxes"])


def test_coco_json_loads_like_the_yolo_layout(tmp_path: Path) -> None:
    yolo = build_data("yolo", root=_yolo_folder(tmp_path / "y", BOX_LINES), image_size=S,
                      augment=False, batch_size=1)
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "c.png").write_bytes(_png())
    doc = {"images": [{"id": 7, "file_name": "c.png", "width": W, "height": H}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [0, 0, W, H],
                            "iscrowd": 0},
                           {"id": 2, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5],
                            "iscrowd": 1}],  # crowd regions are skipped
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(doc))
    coco = build_data("coco_json", train_annotations=str(ann), val_annotations=str(ann),
                      train_images=str(images), val_images=str(images), image_size=S,
                      batch_size=1)
    assert coco.classes == yolo.classes
    (_, t_coco), (_, t_yolo) = next(iter(coco.test)), next(iter(yolo.test))
    assert torch.allclose(t_coco[0]["boxes"], t_yolo[0]["boxes"])
    assert t_coco[0]["labels"].tolist() == t_yolo[0]["labels"].tolist()


def test_a_bad_annotation_line_names_file_and_line(tmp_path: Path) -> None:
    root = _yolo_folder(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n0 0.5 zero 0.5 0.5\n"})
    with pytest.raises(CorruptFileError, match=r"labels/train/a\.txt line 2"):
        build_data("yolo", root=root, image_size=S)
    root2 = _yolo_folder(tmp_path / "two", {"a": "0 0.5 0.5 0.5\n"})
    with pytest.raises(CorruptFileError, match=r"line 1: expected 'class cx cy w h'"):
        build_data("yolo", root=root2, image_size=S)


def _tar(folder: Path, out: Path, top: str) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(folder, arcname=top)
    return out


def test_yolo_archive_loads_and_a_truncated_one_is_a_clear_error(tmp_path: Path) -> None:
    root = _yolo_folder(tmp_path / "d", BOX_LINES)
    archive = _tar(root, tmp_path / "mine.tar.gz", "mine")
    data = build_data("yolo", root=archive, image_size=S, batch_size=1)
    assert data.train.num_samples == 2 and data.test.num_samples == 1
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"not a readable tar\.gz"):
        build_data("yolo", root=cut, image_size=S)


def test_coco128_checks_its_checksum_and_refuses_resolution(tmp_path: Path) -> None:
    fake = tmp_path / "coco128.tar.gz"
    fake.write_bytes(b"not an archive")
    with pytest.raises(CorruptFileError, match="sha256"):
        build_data("coco128", root=tmp_path, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="image_size"):
        build_data("yolo", root=_yolo_folder(tmp_path / "y", BOX_LINES), image_size=S,
                   resolution=32)


REAL = Path(os.environ.get("PRUNELAB_DATA", "/nonexistent")) / "coco128.tar.gz"


@pytest.mark.skipif(not REAL.is_file(), reason="COCO128 archive not in $PRUNELAB_DATA")
def test_real_coco128_boxes_and_masks(tmp_path: Path) -> None:
    data = build_data("coco128", image_size=128, batch_size=8, cache_dir=str(tmp_path))
    assert (data.train.num_samples, data.test.num_samples, data.num_classes) == (128, 128, 81)
    assert data.classes[1] == "person"
    boxes = sum(len(o.boxes) for o in data.train.objects)
    assert 850 < boxes <= 941  # 941 in the archive; boxes under 1 px at 128x128 are dropped
    for o in data.test.objects:
        assert (o.boxes >= 0).all() and (o.boxes <= 128).all()
        assert (o.labels >= 1).all() and (o.labels <= 80).all()
    seg = build_data("coco128_seg", image_size=64, batch_size=4, cache_dir=str(tmp_path))
    assert (seg.train.num_samples, seg.num_classes, seg.task) == (100, 91, "instance_segmentation")
    _, targets = next(iter(seg.test))
    assert all(t["masks"].shape[0] == len(t["labels"]) for t in targets)
