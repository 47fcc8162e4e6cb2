"""A reader for PCD point-cloud files (the Point Cloud Library format, v0.7 and v0.6).

A PCD file is an ASCII header, one `KEY values...` line each (VERSION,
FIELDS, SIZE, TYPE, COUNT, WIDTH, HEIGHT, VIEWPOINT, POINTS, DATA), followed
by the points: `DATA ascii` (one point a line) or `DATA binary` (packed
little-endian records, one field after another). Only the x, y, z fields are
returned; other fields (normals, colour) are skipped. `binary_compressed`
(LZF) is refused with a clear error rather than read wrongly.
"""

from __future__ import annotations

import numpy as np

from prunelab.errors import CorruptFileError

_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "<i1", ("I", 2): "<i2", ("I", 4): "<i4",
          ("I", 8): "<i8", ("U", 1): "<u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"}
_REQUIRED = ("FIELDS", "SIZE", "TYPE", "POINTS", "DATA")


def _header(blob: bytes, name: str) -> tuple[dict[str, list[str]], int]:
    """Header entries and the byte offset where the point data starts."""
    entries: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = blob.find(b"\n", pos)
        if end < 0:
            raise CorruptFileError(f"{name}: PCD header has no DATA line (file truncated?)")
        try:
            line = blob[pos:end].decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise CorruptFileError(f"{name}: PCD header is not ASCII text") from exc
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        entries[key.upper()] = values
        if key.upper() == "DATA":
            break
    missing = [k for k in _REQUIRED if k not in entries]
    if missing:
        raise CorruptFileError(f"{name}: PCD header lacks {', '.join(missing)}")
    return entries, pos


def _record_dtype(h: dict[str, list[str]], name: str) -> np.dtype:
    fields, sizes, types = h["FIELDS"], h["SIZE"], h["TYPE"]
    counts = h.get("COUNT", ["1"] * len(fields))
    if not len(fields) == len(sizes) == len(types) == len(counts):
        raise CorruptFileError(f"{name}: PCD header FIELDS/SIZE/TYPE/COUNT lengths differ")
    parts = []
    for i, (f, s, t, c) in enumerate(zip(fields, sizes, types, counts, strict=True)):
        code = _TYPES.get((t.upper(), int(s)))
        if code is None:
            raise CorruptFileError(f"{name}: PCD field {f!r} has unknown TYPE {t} SIZE {s}")
        parts.append((f if f != "_" else f"_pad{i}", code, (int(c),) if int(c) > 1 else ()))
    return np.dtype(parts)


def parse_pcd(blob: bytes, name: str = "<pcd>") -> np.ndarray:
    """The (N, 3) float32 x, y, z coordinates of a PCD file's bytes.

    Raises CorruptFileError naming `name` for a malformed header, missing
    x/y/z fields, too little point data or an unsupported DATA encoding.
    """
    h, start = _header(blob, name)
    try:
        n = int(h["POINTS"][0])
        dtype = _record_dtype(h, name)
    except (ValueError, IndexError) as exc:
        raise CorruptFileError(f"{name}: bad PCD header value ({exc})") from exc
    missing = [f for f in ("x", "y", "z") if f not in dtype.names]
    if missing:
        raise CorruptFileError(f"{name}: PCD file has no {'/'.join(missing)} field")
    encoding = h["DATA"][0].lower() if h["DATA"] else ""
    if encoding == "binary":
        need = n * dtype.itemsize
        if len(blob) - start < need:
            raise CorruptFileError(f"{name}: PCD data holds {len(blob) - start} bytes, "
                                   f"{n} points need {need} (file truncated?)")
        records = np.frombuffer(blob, dtype=dtype, count=n, offset=start)
        cols = [records[f].astype(np.float32) for f in ("x", "y", "z")]
    elif encoding == "ascii":
        try:
            table = np.loadtxt(blob[start:].decode("ascii").splitlines(), dtype=np.float64,
                               ndmin=2)
        except ValueError as exc:
            raise CorruptFileError(f"{name}: PCD ascii data is not numbers ({exc})") from exc
        width = sum(max(1, int(np.prod(dtype[f].shape))) for f in dtype.names)
        if table.shape[0] < n or table.shape[1] != width:
            raise CorruptFileError(f"{name}: PCD ascii data has {table.shape[0]} rows of "
                                   f"{table.shape[1]} values, expected {n} of {width}")
        offsets = np.cumsum([0] + [max(1, int(np.prod(dtype[f].shape))) for f in dtype.names])
        col = {f: int(offsets[i]) for i, f in enumerate(dtype.names)}
        cols = [table[:n, col[f]].astype(np.float32) for f in ("x", "y", "z")]
    else:
        raise CorruptFileError(f"{name}: PCD DATA {encoding!r} is not supported "
                               f"(ascii and binary are; convert binary_compressed with pcl)")
    return np.stack(cols, axis=1)


def normalize_cloud(points: np.ndarray) -> np.ndarray:
    """Centre a cloud on its centroid and scale it into the unit sphere (PointNet/PointNet++)."""
    centred = points - points.mean(axis=0, keepdims=True)
    radius = float(np.sqrt((centred**2).sum(axis=1)).max())
    return (centred / radius if radius > 0 else centred).astype(np.float32)
