"""CIFAR-10 as a tar.gz of JPEG files: verify, decode once, cache as .npy.

The archive (`train/<class>/*.jpg`, `test/<class>/*.jpg`) is read where it lies
in the data folder and never copied. Its sha256 is checked before decoding; the
decoded uint8 arrays are cached under the cache folder in a sub-folder named
after the archive's checksum, so a changed archive is decoded again instead of
silently reusing stale arrays. Files are written atomically and `meta.json`
last, so an interrupted decode leaves no cache that looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import sys
import tarfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.atomic import atomic_write_bytes
from prunelab.data.arrays import ImageArrays, atomic_save_npy, cache_root
from prunelab.errors import CorruptFileError, DataNotFoundError

CIFAR10_JPG_NAME = "cifar10-jpg.tar.gz"
CIFAR10_JPG_SHA256 = "097287809041e0a666355dfce11470ba1b3f2631fe910d8793c716253f10b297"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_SPLITS = {"train": "train", "test": "test", "val": "test"}
_CACHE_FORMAT = 1
_CHUNK = 2000


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256; CorruptFileError when `expected` is given and differs."""
    digest = sha256_file(path)
    if expected is not None and digest != expected.lower():
        raise CorruptFileError(f"{path} has sha256 {digest}, expected {expected}: the file is "
                               f"damaged or not the expected archive")
    return digest


def _decode_chunk(blobs: list[bytes]) -> tuple[np.ndarray | None, int, str]:
    """Decode image bytes to one (n, 3, H, W) uint8 array (runs in a worker process).

    Returns (array, -1, "") or (None, index of the bad image, reason).
    """
    from PIL import Image  # imported here: workers need nothing else

    out: np.ndarray | None = None
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                arr = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        except Exception as exc:  # PIL raises many kinds for broken data
            return None, i, f"{type(exc).__name__}: {exc}"
        if out is None:
            out = np.empty((len(blobs), *arr.shape), dtype=np.uint8)
        if arr.shape != out.shape[1:]:
            return None, i, (f"size {arr.shape[2]}x{arr.shape[1]} differs from "
                             f"{out.shape[3]}x{out.shape[2]}")
        out[i] = arr
    return out, -1, ""


# Set in the parent just before forking decode workers, which inherit the archive
# bytes for free; tasks then carry only (offset, size) pairs.
_SHARED: bytes | None = None


def _decode_spans(spans: list[tuple[int, int]]) -> tuple[np.ndarray | None, int, str]:
    raw = _SHARED
    assert raw is not None
    return _decode_chunk([raw[o:o + n] for o, n in spans])


def _read_and_decode(archive: Path, workers: int) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """Images of the archive as (keys in archive order, (N, 3, H, W) uint8 in that order).

    The archive is decompressed into memory (this is the path for small,
    CIFAR-sized archives; large sets go through `imagefolder`), then indexed
    by the main process while `workers` forked processes already decode the
    chunks found so far.
    """
    global _SHARED
    keys: list[tuple[str, str, str]] = []
    spans: list[tuple[int, int]] = []
    results: list[Any] = []
    pool: ProcessPoolExecutor | None = None

    def submit(chunk: list[tuple[int, int]]) -> None:
        if pool is not None:
            results.append(pool.submit(_decode_spans, chunk))
        else:
            results.append(_decode_chunk([raw[o:o + n] for o, n in chunk]))

    try:
        raw = archive.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        if workers > 1 and "fork" in mp.get_all_start_methods():
            # fork, not spawn: workers only run PIL/numpy and spawning would re-import torch
            _SHARED = raw
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if len(parts) < 3 or not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
                    continue
                split = _SPLITS.get(parts[-3].lower())
                if split is None:
                    continue
                if member.offset_data + member.size > len(raw):
                    raise EOFError(f"{member.name} ends beyond the end of the archive")
                keys.append((split, parts[-2], member.name))
                spans.append((member.offset_data, member.size))
                if len(spans) % _CHUNK == 0:
                    submit(spans[-_CHUNK:])
        if len(spans) % _CHUNK:
            submit(spans[-(len(spans) % _CHUNK):])
        results = [r.result() if pool is not None else r for r in results]
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
        raise CorruptFileError(f"{archive} is not a readable tar.gz archive: {exc}") from exc
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        _SHARED = None
    starts = range(0, len(spans), _CHUNK)
    arrays = []
    for a, (arr, bad, why) in zip(starts, results, strict=True):
        if arr is None:
            raise CorruptFileError(f"{archive}: cannot decode {keys[a + bad][2]}: {why}")
        arrays.append(arr)
    shapes = {x.shape[1:] for x in arrays}
    if len(shapes) > 1:
        raise CorruptFileError(f"{archive}: images of different sizes {sorted(shapes)}")
    return keys, (np.concatenate(arrays) if arrays else np.empty((0, 3, 1, 1), np.uint8))


def decode_archive(archive: Path, workers: int = 2) -> ImageArrays:
    """Decode an archive of `train/<class>/*` and `test/<class>/*` images to arrays.

    Images are ordered by (split, class, file name) whatever the archive order;
    labels follow the alphabetical order of the class folder names.
    """
    keys, images = _read_and_decode(archive, workers)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    train = [i for i in order if keys[i][0] == "train"]
    test = [i for i in order if keys[i][0] == "test"]
    if not train or not test:
        raise CorruptFileError(
            f"{archive} holds no train/<class>/*.jpg and test/<class>/*.jpg images "
            f"(found {len(train)} train and {len(test)} test images)"
        )
    classes = sorted({keys[i][1] for i in train})
    unknown = sorted({keys[i][1] for i in test} - set(classes))
    if unknown:
        raise CorruptFileError(f"{archive}: test classes {unknown} have no training images")
    index = {c: i for i, c in enumerate(classes)}

    def take(idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        x = images[idx]  # rows are contiguous (C, H, W) images: a cheap gather
        y = np.array([index[keys[i][1]] for i in idx], dtype=np.int64)
        return x, y

    train_x, train_y = take(train)
    test_x, test_y = take(test)
    return ImageArrays(train_x, train_y, test_x, test_y, classes)


_FILES = ("train_x", "train_y", "test_x", "test_y")


def _load_cache(folder: Path) -> ImageArrays | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays: dict[str, np.ndarray] = {}
        for key in _FILES:
            arrays[key] = np.load(folder / f"{key}.npy", allow_pickle=False)
        ok = (
            meta.get("format") == _CACHE_FORMAT
            and list(arrays["train_x"].shape) == [meta["train"], *meta["shape"]]
            and list(arrays["test_x"].shape) == [meta["test"], *meta["shape"]]
            and arrays["train_y"].shape == (meta["train"],)
            and arrays["test_y"].shape == (meta["test"],)
            and arrays["train_x"].dtype == np.uint8
        )
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise CorruptFileError(
            f"decoded cache in {folder} is truncated or damaged ({exc}); "
            f"delete that folder to decode the archive again"
        ) from exc
    if not ok:
        raise CorruptFileError(
            f"decoded cache in {folder} does not match its meta.json; "
            f"delete that folder to decode the archive again"
        )
    return ImageArrays(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                       list(meta["classes"]))


def _write_cache(folder: Path, arrays: ImageArrays, digest: str, source: Path) -> None:
    for key in _FILES:
        atomic_save_npy(folder / f"{key}.npy", getattr(arrays, key))
    meta: dict[str, Any] = {
        "format": _CACHE_FORMAT,
        "source": str(source),
        "sha256": digest,
        "classes": arrays.classes,
        "train": int(arrays.train_x.shape[0]),
        "test": int(arrays.test_x.shape[0]),
        "shape": list(arrays.train_x.shape[1:]),
    }
    data = json.dumps(meta, indent=1).encode()
    atomic_write_bytes(folder / "meta.json", lambda f: f.write(data))


def load_image_archive(
    archive: Path,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    quiet: bool = True,
) -> ImageArrays:
    """Verified, cached decode of an image archive.

    `sha256=None` skips verification (the cache is still keyed by the actual
    checksum). Raises DataNotFoundError for a missing archive and
    CorruptFileError for a checksum mismatch, an undecodable archive or a
    damaged cache, each naming the file.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataNotFoundError(f"image archive not found: looked for {archive}")
    digest = sha256_file(archive)
    if sha256 is not None and digest != sha256.lower():
        raise CorruptFileError(
            f"{archive} has sha256 {digest}, expected {sha256}: the file is damaged or "
            f"not the expected archive"
        )
    folder = cache_root(cache_dir) / f"{archive.name.split('.')[0]}-{digest[:16]}"
    cached = _load_cache(folder)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    arrays = decode_archive(archive, workers=workers)
    try:
        _write_cache(folder, arrays, digest, archive)
    except OSError as exc:  # read-only or full disk: still usable, just not cached
        print(f"warning: could not cache decoded {archive.name} in {folder} ({exc}); "
              f"set $PRUNELAB_CACHE to a writable folder", file=sys.stderr)
    if not quiet:
        print(f"decoded {archive.name}: {arrays.train_x.shape[0]} train + "
              f"{arrays.test_x.shape[0]} test images in {time.perf_counter() - t0:.1f} s, "
              f"cached in {folder}", file=sys.stderr)
    return arrays


def load_cifar10_jpg(
    root: Path,
    *,
    sha256: str | None = CIFAR10_JPG_SHA256,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    quiet: bool = True,
) -> ImageArrays:
    """CIFAR-10 (JPEG) from `root`/cifar10-jpg.tar.gz, decoded once and cached."""
    return load_image_archive(Path(root) / CIFAR10_JPG_NAME, sha256=sha256, cache_dir=cache_dir,
                              workers=workers, quiet=quiet)
