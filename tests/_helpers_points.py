"""Tiny point-cloud data, PCD files and a tiny PointNet++ for the point-cloud tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prunelab.data.pointcloud import PointArrays, PointCloudBundle, bundle_from_points
from prunelab.models.pointnet2 import PointNet2SSG


def pcd_bytes(points: np.ndarray, binary: bool = True, extra_field: bool = False) -> bytes:
    """A PCD v0.7 file of (N, 3) points, written the way PCL writes them."""
    n = len(points)
    fields, size, typ, count = "x y z", "4 4 4", "F F F", "1 1 1"
    data = points.astype("<f4")
    if extra_field:  # an intensity column after x y z, which the reader must skip
        fields, size, typ, count = fields + " intensity", size + " 4", typ + " F", count + " 1"
        data = np.concatenate([data, np.full((n, 1), 7.0, "<f4")], axis=1)
    head = (f"# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS {fields}\n"
            f"SIZE {size}\nTYPE {typ}\nCOUNT {count}\nWIDTH {n}\nHEIGHT 1\n"
            f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {'binary' if binary else 'ascii'}\n")
    if binary:
        return head.encode() + np.ascontiguousarray(data).tobytes()
    rows = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in data)
    return (head + rows + "\n").encode()


def shape_cloud(label: int, n: int, gen: np.random.Generator) -> np.ndarray:
    """Points of a class-dependent shape: a line, a ring or a box surface, scaled and offset."""
    t = gen.uniform(-1, 1, size=(n, 3))
    if label == 0:
        t[:, 1:] *= 0.05
    elif label == 1:
        a = gen.uniform(0, 2 * np.pi, n)
        t = np.stack([np.cos(a), np.sin(a), gen.normal(0, 0.03, n)], axis=1)
    else:
        t[np.arange(n), gen.integers(0, 3, n)] = gen.choice([-1.0, 1.0], n)
    return (t * gen.uniform(5, 20) + gen.uniform(-30, 30, size=3)).astype(np.float32)


def write_pcd_tree(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("a", "b", "c"),
                   n: int = 40, seed: int = 0) -> None:
    """<root>/<class>/{train,test}/<class>_<i>.pcd, the ModelNet layout."""
    gen = np.random.default_rng(seed)
    for label, cls in enumerate(classes):
        for split in ("train", "test"):
            folder = root / cls / split
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{cls}_{i:04d}.pcd").write_bytes(
                    pcd_bytes(shape_cloud(label, n, gen)))


def tiny_point_data(batch_size: int = 8, n_train: int = 48, n_test: int = 24, points: int = 64,
                    augment: bool = True, seed: int = 0) -> PointCloudBundle:
    from prunelab.data.pcd import normalize_cloud

    gen = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        x = np.stack([normalize_cloud(shape_cloud(int(c), points, gen)) for c in y])
        return x, y.astype(np.int64)

    arrays = PointArrays(*split(n_train), *split(n_test), ["line", "ring", "box"])
    return bundle_from_points("tiny_points", arrays, batch_size=batch_size,
                              eval_batch_size=batch_size, holdout=0, seed=seed, augment=augment,
                              drop_last=True)


def tiny_pointnet(num_classes: int = 3, dropout: float = 0.0) -> PointNet2SSG:
    torch.manual_seed(0)
    return PointNet2SSG(num_classes=num_classes, width=0.125, npoints=(16, 8), radii=(0.4, 0.8),
                        nsamples=(8, 8), dropout=dropout)
