"""Point-cloud classification data: ModelNet10 (PCD archive) and any folder of PCD files.

Layout, in a tar(.gz) archive or a folder: `<class>/<split>/<name>.pcd` (the
ModelNet layout) or `<split>/<class>/<name>.pcd` (the ImageFolder layout),
split `train` and `test` (or `val`). Every cloud is centred and scaled into
the unit sphere, then cut to `num_points` points (the first ones; a cloud with
fewer repeats its points cyclically). The archive's sha256 is checked and the
decoded clouds are cached as one .npz, written atomically, in a cache folder
named after the source's checksum, so a changed archive is decoded again.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab.atomic import atomic_write_bytes
from prunelab.data.archive import verified_sha256
from prunelab.data.arrays import cache_root, data_root
from prunelab.data.pcd import normalize_cloud, parse_pcd
from prunelab.data.point_loader import PointAugment, PointCloudLoader
from prunelab.data.registry import DataBundle, _rank0_first, register_data, split_holdout
from prunelab.errors import ConfigError, CorruptFileError, DataNotFoundError

MODELNET10_NAME = "modelnet10-pcd.tar.gz"
MODELNET10_SHA256 = "7c749139a984196f7f679ecc26a8e2d0dd6000fb1372abdb82e56f891039d8e9"
_SPLITS = {"train": "train", "test": "test", "val": "test"}
_CACHE_FORMAT = 1


@dataclass
class PointArrays:
    """Normalised clouds (N, P, 3) float32 and int64 labels for a train and a test split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]


def _split_and_class(path: str) -> tuple[str, str] | None:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if len(parts) < 3 or not parts[-1].lower().endswith(".pcd"):
        return None
    if parts[-2].lower() in _SPLITS:
        return _SPLITS[parts[-2].lower()], parts[-3]
    if parts[-3].lower() in _SPLITS:
        return _SPLITS[parts[-3].lower()], parts[-2]
    return None


def _archive_files(archive: Path) -> Iterator[tuple[str, bytes]]:
    try:
        raw = archive.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for member in tf:
                if member.isfile() and _split_and_class(member.name) is not None:
                    f = tf.extractfile(member)
                    assert f is not None
                    yield member.name, f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise CorruptFileError(f"{archive} is not a readable tar.gz archive: {exc}") from exc


def _folder_files(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and _split_and_class(rel) is not None:
            yield rel, path.read_bytes()


def _fixed_size(points: np.ndarray, n: int, name: str) -> np.ndarray:
    if len(points) == 0:
        raise CorruptFileError(f"{name}: the point cloud is empty")
    if len(points) < n:
        points = points[np.arange(n) % len(points)]
    return points[:n]


def decode_point_clouds(files: Iterator[tuple[str, bytes]], num_points: int, source: str
                        ) -> PointArrays:
    """Parse, normalise and stack (path, PCD bytes) pairs; labels by sorted class name."""
    keyed: list[tuple[str, str, str, np.ndarray]] = []
    for name, blob in files:
        split, cls = _split_and_class(name)  # type: ignore[misc]
        cloud = _fixed_size(normalize_cloud(parse_pcd(blob, name)), num_points, name)
        keyed.append((split, cls, name, cloud))
    keyed.sort(key=lambda k: k[:3])
    classes = sorted({k[1] for k in keyed if k[0] == "train"})
    test_only = sorted({k[1] for k in keyed if k[0] == "test"} - set(classes))
    n_train = sum(k[0] == "train" for k in keyed)
    if not n_train or n_train == len(keyed):
        raise CorruptFileError(f"{source} holds no <class>/train/*.pcd and <class>/test/*.pcd "
                               f"files (found {n_train} train, {len(keyed) - n_train} test)")
    if test_only:
        raise CorruptFileError(f"{source}: test classes {test_only} have no training clouds")
    index = {c: i for i, c in enumerate(classes)}

    def stack(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [k for k in keyed if k[0] == split]
        return (np.stack([k[3] for k in rows]).astype(np.float32),
                np.array([index[k[1]] for k in rows], dtype=np.int64))

    return PointArrays(*stack("train"), *stack("test"), classes)


def _load_cache(path: Path) -> PointArrays | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = PointArrays(z["train_x"], z["train_y"], z["test_x"], z["test_y"],
                                 list(meta["classes"]))
        ok = (meta.get("format") == _CACHE_FORMAT and arrays.train_x.ndim == 3
              and arrays.train_x.shape[0] == arrays.train_y.shape[0]
              and arrays.test_x.shape[0] == arrays.test_y.shape[0])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error,
            zipfile.BadZipFile) as exc:
        raise CorruptFileError(f"decoded cache {path} is truncated or damaged ({exc}); "
                               f"delete it to decode the data again") from exc
    if not ok:
        raise CorruptFileError(f"decoded cache {path} is inconsistent; delete it to decode again")
    return arrays


def _write_cache(path: Path, arrays: PointArrays, source: Path) -> None:
    meta = json.dumps({"format": _CACHE_FORMAT, "source": str(source),
                       "classes": arrays.classes})

    def write(f: Any) -> None:
        np.savez(f, train_x=arrays.train_x, train_y=arrays.train_y, test_x=arrays.test_x,
                 test_y=arrays.test_y, meta=np.array(meta))

    atomic_write_bytes(path, write)


def load_point_clouds(
    source: Path,
    *,
    num_points: int = 1024,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
) -> PointArrays:
    """Verified, cached decode of a PCD archive (a file) or folder (a directory).

    Raises DataNotFoundError when `source` does not exist and CorruptFileError
    (naming the file) for a checksum mismatch, an unreadable archive, a bad
    PCD file or a damaged cache.
    """
    source = Path(source)
    if num_points < 1:
        raise ConfigError(f"num_points must be >= 1, got {num_points}")
    if source.is_dir():
        return decode_point_clouds(_folder_files(source), num_points, str(source))
    if not source.is_file():
        raise DataNotFoundError(f"point-cloud data not found: looked for {source}")
    digest = verified_sha256(source, sha256)
    cache = cache_root(cache_dir) / f"{source.name.split('.')[0]}-{digest[:16]}-p{num_points}.npz"
    cached = _load_cache(cache)
    if cached is not None:
        return cached
    arrays = decode_point_clouds(_archive_files(source), num_points, str(source))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        _write_cache(cache, arrays, source)
    except OSError:  # read-only cache: still usable, decoded again next time
        pass
    return arrays


class PointCloudBundle(DataBundle):
    """A DataBundle of point clouds: input (3, P), no image resolution."""

    task = "pointcloud_classification"

    @property
    def effective_input_size(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.input_size

    def set_resolution(self, resolution: int | None) -> None:
        if resolution is not None:
            raise ConfigError("resolution applies to images; point clouds have num_points")

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["augment"] = self.train.augment is not None  # type: ignore[attr-defined]
        info.pop("cutout", None)
        return info


def bundle_from_points(name: str, arrays: PointArrays, *, batch_size: int, eval_batch_size: int,
                       holdout: int, seed: int, augment: bool, drop_last: bool
                       ) -> PointCloudBundle:
    train_x = torch.from_numpy(arrays.train_x)
    train_y = torch.from_numpy(arrays.train_y)
    train_idx = hold = None
    if holdout:
        train_idx, hold_idx = split_holdout(train_x.shape[0], holdout, seed)
        hold = PointCloudLoader(train_x, train_y, batch_size=eval_batch_size, indices=hold_idx)
    train = PointCloudLoader(train_x, train_y, batch_size=batch_size, indices=train_idx,
                             shuffle=True, augment=PointAugment() if augment else None,
                             drop_last=drop_last, seed=seed)
    test = PointCloudLoader(torch.from_numpy(arrays.test_x), torch.from_numpy(arrays.test_y),
                            batch_size=eval_batch_size)
    return PointCloudBundle(name, train, test, num_classes=len(arrays.classes),  # type: ignore[arg-type]
                            input_size=(3, arrays.train_x.shape[1]), mean=(0.0,), std=(1.0,),
                            classes=arrays.classes, holdout=hold)


def _build(name: str, source: Path, num_points: int, sha256: str | None,
           cache_dir: str | None, kw: dict[str, Any]) -> PointCloudBundle:
    if kw["resolution"] is not None or kw["cutout"]:
        raise ConfigError(f"{name}: resolution and cutout apply to images, not point clouds")
    with _rank0_first():
        arrays = load_point_clouds(source, num_points=num_points, sha256=sha256,
                                   cache_dir=cache_dir)
    return bundle_from_points(name, arrays, **{k: kw[k] for k in (
        "batch_size", "eval_batch_size", "holdout", "seed", "augment", "drop_last")})


@register_data("modelnet10")
def _modelnet10(*, num_points: int = 1024, sha256: str | None = MODELNET10_SHA256,
                cache_dir: str | None = None, **kw: Any) -> PointCloudBundle:
    root = data_root(kw["root"])
    return _build("modelnet10", root / MODELNET10_NAME, num_points, sha256, cache_dir, kw)


@register_data("pointfolder")
def _pointfolder(*, num_points: int = 1024, cache_dir: str | None = None, **kw: Any
                 ) -> PointCloudBundle:
    if kw["root"] is None:
        raise ConfigError("pointfolder needs root=<folder or .tar.gz of <class>/<split>/*.pcd>")
    return _build("pointfolder", Path(kw["root"]), num_points, None, cache_dir, kw)
