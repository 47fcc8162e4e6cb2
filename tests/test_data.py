"""prunelab.data: archive decode + cache, pickled CIFAR, image folders, batch augmentation."""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prunelab.data.loader as loader_mod
from prunelab.data import (
    CIFAR10_JPG_NAME,
    CIFAR10_JPG_SHA256,
    TensorLoader,
    build_data,
    crop_flip,
    cutout,
    draw_crop_flip,
    draw_cutout,
    in_random_order,
    load_image_archive,
    make_synthetic,
    normalize,
    sha256_file,
    shard_positions,
    split_holdout,
)
from prunelab.errors import ConfigError, CorruptFileError, DataNotFoundError, UnknownNameError

# ----------------------------------------------------------------- helpers


def _jpeg(colour: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


CLASSES = ["cat", "ant", "bee"]  # deliberately not alphabetical in creation order
COLOURS = {"ant": (250, 10, 10), "bee": (10, 250, 10), "cat": (10, 10, 250)}


def make_archive(path: Path, n_train: int = 4, n_test: int = 2, broken: str | None = None) -> Path:
    """A tiny CIFAR-like tar.gz: train/<class>/NNNN.jpg and test/<class>/NNNN.jpg."""
    with tarfile.open(path, "w:gz") as tf:
        for split, n in (("test", n_test), ("train", n_train)):
            for cls in CLASSES:
                for i in range(n):
                    name = f"{split}/{cls}/{i:04d}.jpg"
                    data = b"not a jpeg" if name == broken else _jpeg(COLOURS[cls])
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return make_archive(folder / CIFAR10_JPG_NAME)


# ------------------------------------------------------- archive + cache


def test_archive_decodes_with_alphabetical_labels_and_caches(archive: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    digest = sha256_file(archive)
    arrays = load_image_archive(archive, sha256=digest, cache_dir=cache, workers=1)
    assert arrays.classes == ["ant", "bee", "cat"]
    assert arrays.train_x.shape == (12, 3, 8, 8) and arrays.train_x.dtype == np.uint8
    assert arrays.test_x.shape == (6, 3, 8, 8)
    assert arrays.train_y.dtype == np.int64
    assert np.bincount(arrays.train_y).tolist() == [4, 4, 4]
    # label i really is class i: ants are red, bees green, cats blue
    for label, cls in enumerate(arrays.classes):
        mean_rgb = arrays.train_x[arrays.train_y == label].mean(axis=(0, 2, 3))
        assert int(np.argmax(mean_rgb)) == int(np.argmax(COLOURS[cls]))
    folders = list(cache.iterdir())
    assert len(folders) == 1 and folders[0].name.endswith(digest[:16])
    assert {p.name for p in folders[0].iterdir()} == {
        "meta.json", "train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy"}

    # second load comes from the cache: decoding is not even attempted
    import prunelab.data.archive as archive_mod

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(archive_mod, "decode_archive", boom)
    again = load_image_archive(archive, sha256=digest, cache_dir=cache)
    assert np.array_equal(again.train_x, arrays.train_x)
    assert np.array_equal(again.test_y, arrays.test_y)


def test_changed_archive_is_decoded_again(archive: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    first = load_image_archive(archive, sha256=None, cache_dir=cache, workers=1)
    make_archive(archive, n_train=5)  # same name, new content
    second = load_image_archive(archive, sha256=None, cache_dir=cache, workers=1)
    assert first.train_x.shape[0] == 12 and second.train_x.shape[0] == 15
    assert len(list(cache.iterdir())) == 2


def test_parallel_decode_matches_serial(tmp_path: Path):
    import prunelab.data.archive as archive_mod

    path = make_archive(tmp_path / "a.tar.gz", n_train=7, n_test=3)
    old = archive_mod._CHUNK
    archive_mod._CHUNK = 5  # several chunks, so the pool really splits the work
    try:
        serial = archive_mod.decode_archive(path, workers=1)
        parallel = archive_mod.decode_archive(path, workers=2)
    finally:
        archive_mod._CHUNK = old
    assert np.array_equal(serial.train_x, parallel.train_x)
    assert np.array_equal(serial.test_y, parallel.test_y)


def test_checksum_mismatch_is_a_clear_error(archive: Path, tmp_path: Path):
    with pytest.raises(CorruptFileError, match="sha256") as err:
        load_image_archive(archive, sha256="0" * 64, cache_dir=tmp_path / "c")
    assert str(archive) in str(err.value)
    # the real expected checksum is the default of the cifar10_jpg builder
    with pytest.raises(CorruptFileError, match=CIFAR10_JPG_SHA256):
        build_data("cifar10_jpg", root=archive.parent, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing decoded, nothing cached


def test_missing_archive_or_folder_names_where_it_looked(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(DataNotFoundError, match=re.escape(str(tmp_path / CIFAR10_JPG_NAME))):
        build_data("cifar10_jpg", root=tmp_path, cache_dir=tmp_path / "c")
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match=r"nowhere.*PRUNELAB_DATA"):
        build_data("cifar10_jpg")
    monkeypatch.delenv("PRUNELAB_DATA")
    with pytest.raises(DataNotFoundError, match="PRUNELAB_DATA"):
        build_data("cifar10_jpg")


def test_truncated_cache_is_a_clear_error(archive: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    load_image_archive(archive, sha256=None, cache_dir=cache, workers=1)
    (folder,) = cache.iterdir()
    data = (folder / "train_x.npy").read_bytes()
    (folder / "train_x.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated or damaged") as err:
        load_image_archive(archive, sha256=None, cache_dir=cache)
    assert str(folder) in str(err.value)


def test_unwritable_cache_still_returns_the_data(archive: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    arrays = load_image_archive(archive, sha256=None, cache_dir=blocker, workers=1)
    assert arrays.train_x.shape[0] == 12
    assert "could not cache" in capsys.readouterr().err


def test_undecodable_image_is_named(tmp_path: Path):
    path = make_archive(tmp_path / "a.tar.gz", broken="train/bee/0002.jpg")
    with pytest.raises(CorruptFileError, match=re.escape("train/bee/0002.jpg")):
        load_image_archive(path, cache_dir=tmp_path / "c", workers=1)
    (tmp_path / "b.tar.gz").write_bytes(path.read_bytes()[:300])
    with pytest.raises(CorruptFileError, match=re.escape("b.tar.gz")):
        load_image_archive(tmp_path / "b.tar.gz", cache_dir=tmp_path / "c", workers=1)


@pytest.mark.skipif(
    not os.environ.get("PRUNELAB_DATA")
    or not (Path(os.environ.get("PRUNELAB_DATA", "")) / CIFAR10_JPG_NAME).is_file(),
    reason="PRUNELAB_DATA does not hold cifar10-jpg.tar.gz",
)
def test_real_cifar10_jpg_archive():
    """Decodes once per machine (cached in $PRUNELAB_CACHE or ~/.cache/prunelab)."""
    data = build_data("cifar10_jpg", batch_size=256, holdout=1000)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]
    assert data.num_classes == 10 and data.input_size == (3, 32, 32)
    assert data.train.num_samples == 49000 and data.test.num_samples == 10000
    assert data.holdout is not None and data.holdout.num_samples == 1000
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert torch.bincount(data.train.labels).tolist() == [5000] * 10
    x, y = next(iter(data.train))
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.3 and 0.7 < x.std().item() < 1.3  # normalised


# ------------------------------------------------------------ pickled CIFAR


def _write_cifar10(root: Path, n: int = 6) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [f"c{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


def test_pickled_cifar10(tmp_path: Path):
    _write_cifar10(tmp_path)
    data = build_data("cifar10", root=tmp_path, batch_size=4, augment=False)
    assert data.train.num_samples == 30 and data.test.num_samples == 6
    assert data.classes[0] == "c0" and data.num_classes == 10
    x, _ = next(iter(data.test))
    assert x.shape == (4, 3, 32, 32)


def test_pickled_cifar_missing_and_malicious(tmp_path: Path):
    with pytest.raises(DataNotFoundError, match="cifar-100-python"):
        build_data("cifar100", root=tmp_path)
    _write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CorruptFileError, match="data_batch_3"):
        build_data("cifar10", root=tmp_path)


# ------------------------------------------------------------- image folder


def _write_folder(root: Path, per_class: int = 5) -> None:
    for split in ("train", "val"):
        for cls, colour in COLOURS.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 16), colour).save(d / f"{i}.jpg")


def test_imagefolder_streams_with_crops_and_holdout(tmp_path: Path):
    _write_folder(tmp_path)
    data = build_data("imagefolder", root=tmp_path, image_size=12, batch_size=4, workers=0,
                      holdout=3, drop_last=False)
    assert data.classes == ["ant", "bee", "cat"] and data.input_size == (3, 12, 12)
    assert data.train.num_samples == 12 and data.holdout.num_samples == 3
    xs = [x for x, _ in data.train]
    assert sum(x.shape[0] for x in xs) == 12 and xs[0].shape[1:] == (3, 12, 12)
    x, y = next(iter(data.test))
    assert x.shape == (4, 3, 12, 12) and y.dtype == torch.int64
    data.set_resolution(8)
    assert next(iter(data.holdout))[0].shape[-2:] == (8, 8)
    erased = build_data("imagefolder", root=tmp_path, image_size=12, batch_size=12, workers=0,
                        cutout=4)
    x, _ = next(iter(erased.train))
    assert ((x == 0).all(1).flatten(1).sum(1) >= 4).all()  # every image has an erased patch
    with pytest.raises(DataNotFoundError, match=r"looked for .*train"):
        build_data("imagefolder", root=tmp_path / "train", workers=0)
    (tmp_path / "only" / "train" / "ant").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match=r"val or .*test"):
        build_data("imagefolder", root=tmp_path / "only", workers=0)


def test_imagefolder_shards_under_distributed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from torch.utils.data import DistributedSampler

    import prunelab.data.folder as folder_mod

    _write_folder(tmp_path)  # 15 train, 15 val images
    data = build_data("imagefolder", root=tmp_path, image_size=8, batch_size=2, workers=0,
                      drop_last=False)
    seen = {}
    for rank in range(2):
        monkeypatch.setattr(folder_mod, "dist_rank_world", lambda r=rank: (r, 2))
        assert isinstance(data.train._sampler(0), DistributedSampler)
        assert len(data.train) == 4  # 8 of the 15 (padded) images per rank, batch 2
        seen[rank] = torch.cat([y for _, y in data.test])
    # evaluation shards are not padded: every image counted exactly once
    assert len(seen[0]) + len(seen[1]) == 15
    assert (len(seen[0]), len(seen[1])) == (8, 7)


# --------------------------------------------------------- augmentation


def test_crop_flip_matches_per_image_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (16, 3, 10, 10), dtype=torch.uint8, generator=g)
    oy, ox, fl = draw_crop_flip(16, 4, True, g)
    assert oy.min() >= 0 and oy.max() <= 8 and ox.min() >= 0 and ox.max() <= 8
    out = crop_flip(x, oy, ox, fl, 4)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        ref = padded[i, :, oy[i]:oy[i] + 10, ox[i]:ox[i] + 10]
        if fl[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    # extreme offsets stay inside the padded image
    corner = crop_flip(x, torch.full((16,), 8), torch.zeros(16, dtype=torch.long),
                       torch.zeros(16, dtype=torch.bool), 4)
    assert torch.equal(corner[:, :, :6, 4:], x[:, :, 4:, :6])
    assert corner[:, :, 6:].sum() == 0


def test_flip_really_flips_and_no_aug_is_identity():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    zeros = torch.zeros(2, dtype=torch.long)
    flipped = crop_flip(x, zeros, zeros, torch.ones(2, dtype=torch.bool), 0)
    assert torch.equal(flipped, x.flip(3))
    same = crop_flip(x, zeros, zeros, torch.zeros(2, dtype=torch.bool), 0)
    assert torch.equal(same, x)
    g = torch.Generator().manual_seed(0)
    _, _, fl = draw_crop_flip(1000, 4, True, g)
    assert 400 < int(fl.sum()) < 600
    _, _, none = draw_crop_flip(10, 4, False, g)
    assert not none.any()
    z = normalize(torch.full((1, 3, 2, 2), 128, dtype=torch.uint8), (0.5, 0.25, 0.0), (0.25,) * 3)
    assert z.dtype == torch.float32
    assert torch.allclose(z[0, :, 0, 0], (128 - torch.tensor([127.5, 63.75, 0.0])) / 63.75)


def test_cutout_erases_a_clipped_square_per_image():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 3, 10, 10) + 10.0  # no natural zeros
    cy, cx = draw_cutout(32, 10, 10, g)
    assert cy.min() >= 0 and cy.max() <= 9 and cx.min() >= 0 and cx.max() <= 9
    out = cutout(x, cy, cx, 4)
    for i in range(32):
        ref = x[i].clone()
        ref[:, max(0, cy[i] - 2):cy[i] + 2, max(0, cx[i] - 2):cx[i] + 2] = 0.0
        assert torch.equal(out[i], ref)
    assert torch.equal(cutout(x, cy, cx, 0), x)
    # a centre in the corner keeps only the in-image quarter of the square
    corner = cutout(x[:1], torch.tensor([0]), torch.tensor([0]), 4)
    assert int((corner == 0).sum()) == 3 * 2 * 2


def test_loader_cutout_only_erases_and_leaves_evaluation_alone():
    base = build_data("synthetic", batch_size=32, n_train=64, n_test=32, seed=3)
    erased = build_data("synthetic", batch_size=32, n_train=64, n_test=32, seed=3, cutout=6)
    for (xa, ya), (xb, yb) in zip(base.train, erased.train, strict=True):
        assert torch.equal(ya, yb)  # same order, crops and flips: cutout draws after them
        changed = (xa != xb).any(1)
        assert changed.any() and (xb.abs().sum(1)[changed] == 0).all()
        assert int(changed.flatten(1).sum(1).max()) <= 36
    for (xa, _), (xb, _) in zip(base.test, erased.test, strict=True):
        assert torch.equal(xa, xb)
    with pytest.raises(ConfigError, match="cutout"):
        build_data("synthetic", cutout=-1)


def test_loader_is_deterministic_by_seed_and_resumable():
    arrays = make_synthetic(n_train=100, n_test=10, image_size=8, num_classes=4)
    images, labels = torch.from_numpy(arrays.train_x), torch.from_numpy(arrays.train_y)

    def make(seed: int) -> TensorLoader:
        return TensorLoader(images, labels, batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                            shuffle=True, augment=True, drop_last=True, pad=2, seed=seed)

    a, b, c = make(1), make(1), make(2)
    ea = [x for x, _ in a]
    eb = [x for x, _ in b]
    assert len(ea) == len(a) == 6
    assert all(torch.equal(p, q) for p, q in zip(ea, eb, strict=True))
    assert not torch.equal(ea[0], next(iter(c))[0])
    # state after one epoch replays the second epoch exactly in a fresh loader
    state = a.state_dict()
    second = [(x, y) for x, y in a]
    fresh = make(99)
    fresh.load_state_dict(state)
    again = [(x, y) for x, y in fresh]
    assert fresh.epoch == a.epoch == 2
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
               for p, q in zip(second, again, strict=True))
    # one epoch visits every sample once (drop_last off, no shuffle)
    plain = TensorLoader(images, labels, batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.equal(torch.cat([y for _, y in plain]), labels)


def test_resolution_reaches_train_eval_and_holdout():
    data = build_data("synthetic", n_train=64, n_test=32, image_size=32, batch_size=8,
                      holdout=16, resolution=24)
    assert data.resolution == 24 and data.effective_input_size == (3, 24, 24)
    for loader in (data.train, data.test, data.holdout):
        assert next(iter(loader))[0].shape == (8, 3, 24, 24)
    data.set_resolution(None)
    assert next(iter(data.test))[0].shape == (8, 3, 32, 32)
    data.set_resolution(16)
    x16 = next(iter(data.test))[0]
    assert x16.shape[-1] == 16
    # antialiased bilinear resize of the normalised full-size batch
    data.set_resolution(None)
    x32 = next(iter(data.test))[0]
    ref = torch.nn.functional.interpolate(x32, size=(16, 16), mode="bilinear",
                                          align_corners=False, antialias=True)
    assert torch.allclose(x16, ref, atol=1e-5)


def test_holdout_is_disjoint_and_deterministic():
    data = build_data("synthetic", n_train=200, n_test=20, holdout=50, seed=5, batch_size=10,
                      augment=False, drop_last=False)
    train_idx, hold_idx = data.train.indices, data.holdout.indices
    assert set(train_idx.tolist()).isdisjoint(hold_idx.tolist())
    assert len(train_idx) + len(hold_idx) == 200
    t2, h2 = split_holdout(200, 50, seed=5)
    assert torch.equal(h2, hold_idx) and torch.equal(t2, train_idx)
    assert not torch.equal(split_holdout(200, 50, seed=6)[1], hold_idx)
    # a training epoch never yields a hold-out image
    hold_imgs = {tuple(x.flatten().tolist()) for x, _ in data.holdout for x in x}
    seen = 0
    for xb, _ in data.train:
        for x in xb:
            assert tuple(x.flatten().tolist()) not in hold_imgs
            seen += 1
    assert seen == 150
    with pytest.raises(ConfigError, match="holdout"):
        build_data("synthetic", n_train=20, holdout=20)
    # moving to a device keeps train and hold-out on one shared image tensor
    data.to("cpu")
    assert data.train.images is data.holdout.images


def test_shards_of_two_ranks_make_the_full_batch(monkeypatch: pytest.MonkeyPatch):
    for n, even, drop in [(10, True, False), (11, True, False), (11, True, True),
                          (11, False, False), (1, True, False)]:
        shards = [shard_positions(n, r, 2, even, drop) for r in range(2)]
        if even:
            assert shards[0].numel() == shards[1].numel()
        if not even or not drop:
            assert set(torch.cat(shards).tolist()) == set(range(n))
        if not even:
            assert sorted(torch.cat(shards).tolist()) == list(range(n))
    arrays = make_synthetic(n_train=64, n_test=8, image_size=8, num_classes=4)
    images, labels = torch.from_numpy(arrays.train_x), torch.from_numpy(arrays.train_y)
    kw = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "shuffle": True, "augment": True,
          "drop_last": True, "pad": 2, "seed": 3}
    full = list(TensorLoader(images, labels, batch_size=16, **kw))
    parts = []
    for rank in range(2):
        monkeypatch.setattr(loader_mod, "dist_rank_world", lambda r=rank: (r, 2))
        parts.append(list(TensorLoader(images, labels, batch_size=8, **kw)))
    assert len(parts[0]) == len(parts[1]) == len(full) == 4
    for k, (x, y) in enumerate(full):
        x0, y0 = parts[0][k]
        x1, y1 = parts[1][k]
        # rank r holds positions r, r+2, ... of the shared order
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)


def test_synthetic_is_deterministic_and_configurable():
    a = make_synthetic(n_train=20, n_test=10, image_size=12, num_classes=3, seed=4)
    b = make_synthetic(n_train=20, n_test=10, image_size=12, num_classes=3, seed=4)
    c = make_synthetic(n_train=20, n_test=10, image_size=12, num_classes=3, seed=5)
    assert np.array_equal(a.train_x, b.train_x) and not np.array_equal(a.train_x, c.train_x)
    assert a.train_x.shape == (20, 3, 12, 12) and set(a.train_y.tolist()) == {0, 1, 2}
    data = build_data("synthetic", n_train=20, n_test=10, image_size=12, num_classes=3)
    assert data.num_classes == 3 and data.input_size == (3, 12, 12)


def test_registry_errors():
    with pytest.raises(UnknownNameError, match="imagenette"):
        build_data("imagenette")
    with pytest.raises(ConfigError, match="n_trian"):
        build_data("synthetic", n_trian=10)
    with pytest.raises(ConfigError, match="batch_size"):
        build_data("synthetic", batch_size=0)


def _class_sorted_loader(n: int = 60, classes: int = 3, batch: int = 10) -> TensorLoader:
    """A loader over images sorted by label, the order an image folder's test split has."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) * classes // n
    return TensorLoader(images, labels, batch_size=batch, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_in_random_order_mixes_a_class_sorted_split_and_leaves_it_alone():
    loader = _class_sorted_loader(classes=2)
    before = [y for _, y in loader]
    state = loader.generator.get_state()
    mixed = in_random_order(loader, seed=3)
    ys = [y for _, y in mixed]
    first_half, second_half = torch.cat(ys[:3]), torch.cat(ys[3:])
    assert set(first_half.tolist()) == set(second_half.tolist()) == {0, 1}
    assert set(torch.cat(before[:3]).tolist()).isdisjoint(torch.cat(before[3:]).tolist())
    # every sample once, the same order for the same seed, the original untouched
    assert sorted(torch.cat(ys).tolist()) == sorted(torch.cat(before).tolist())
    again = [y for _, y in in_random_order(loader, 3)]
    assert all(torch.equal(a, b) for a, b in zip(ys, again, strict=True))
    assert torch.equal(loader.generator.get_state(), state) and not loader.shuffle
    assert all(torch.equal(a, b) for a, b in zip(before, [y for _, y in loader], strict=True))


def test_in_random_order_mixes_an_image_folder_split(tmp_path: Path):
    _write_folder(tmp_path)
    data = build_data("imagefolder", root=tmp_path, image_size=12, batch_size=3, workers=0)
    plain = torch.cat([y for _, y in data.test]).tolist()
    mixed = torch.cat([y for _, y in in_random_order(data.test, seed=1)]).tolist()
    assert plain == sorted(plain) and sorted(mixed) == plain and mixed != plain
    assert not data.test.shuffle


def test_method_batches_of_a_class_sorted_split_hold_several_classes(tmp_path: Path):
    # CHEX's and BWCP's masked-equals-pruned checks run on batches(task, 1, "test")
    from prunelab.methods.base import PruneTask
    from prunelab.methods.finetune import batches
    from prunelab.train import TrainConfig

    _write_folder(tmp_path)
    data = build_data("imagefolder", root=tmp_path, image_size=12, batch_size=5, workers=0)
    task = PruneTask(model=torch.nn.Identity(), data=data, target=0.5, train=TrainConfig())
    assert torch.unique(next(iter(data.test))[1]).numel() == 1  # the split itself is sorted
    first = [y for _, y in batches(task, 1, "test")]
    assert len(first) == 1 and torch.unique(first[0]).numel() > 1
    again = [y for _, y in batches(task, 1, "test")]
    assert torch.equal(first[0], again[0])  # a fixed order, not a new draw per call
