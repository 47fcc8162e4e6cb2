"""Point clouds: PCD parsing, ModelNet-style data, augmentation, PointNet++ pruning, training."""

from __future__ import annotations

import copy
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prunelab import io as pio
from prunelab import models
from prunelab.data import build_data, load_point_clouds, normalize_cloud, parse_pcd
from prunelab.data.point_loader import PointAugment, apply_point_augment, draw_point_augment
from prunelab.errors import CorruptFileError, DataNotFoundError
from prunelab.graph import trace
from prunelab.layers.point_ops import ball_query, farthest_point_sample, group_points
from prunelab.metrics import count
from prunelab.train import TrainConfig, Trainer
from tests._contract import assert_close_rel, masked_and_pruned, random_plan
from tests._helpers_points import (
    pcd_bytes,
    shape_cloud,
    tiny_point_data,
    tiny_pointnet,
    write_pcd_tree,
)
from tests.test_tasks import _LossByHand

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- PCD files
def test_parse_hand_written_binary_and_ascii_pcd():
    pts = np.array([[0.5, -1.0, 2.0], [3.25, 0.0, -0.125], [1e3, 2e-3, 7.0]], np.float32)
    assert np.array_equal(parse_pcd(pcd_bytes(pts)), pts)
    assert np.array_equal(parse_pcd(pcd_bytes(pts, extra_field=True)), pts)
    assert np.allclose(parse_pcd(pcd_bytes(pts, binary=False)), pts, atol=1e-6)
    assert np.allclose(parse_pcd(pcd_bytes(pts, binary=False, extra_field=True)), pts, atol=1e-6)
    # a header written by hand, with comments and upper/lower case, POINTS before DATA
    blob = (b"# hand-written\nVERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
            b"WIDTH 2\nHEIGHT 1\nPOINTS 2\nDATA binary\n"
            + np.array([1, 2, 3, 4, 5, 6], "<f4").tobytes())
    assert parse_pcd(blob).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("blob, match", [
    (pcd_bytes(np.ones((4, 3), np.float32))[:-5], "truncated"),
    (b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 1\n", "no DATA line"),
    (b"VERSION 0.7\nFIELDS x y\nSIZE 4 4\nTYPE F F\nPOINTS 1\nDATA binary\n" + bytes(8),
     "no z field"),
    (b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 1\nDATA binary_compressed\n" + bytes(12),
     "not supported"),
    (b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 2\nDATA ascii\n1 2 3\n", "expected 2"),
    (b"FIELDS x y z\nSIZE 4 4\nTYPE F F F\nPOINTS 1\nDATA binary\n" + bytes(12), "lengths"),
])
def test_damaged_pcd_is_one_clear_error_naming_the_file(blob: bytes, match: str):
    with pytest.raises(CorruptFileError, match=match) as err:
        parse_pcd(blob, "chair_0001.pcd")
    assert "chair_0001.pcd" in str(err.value)


def test_normalised_cloud_is_centred_in_the_unit_sphere():
    cloud = normalize_cloud(shape_cloud(2, 200, np.random.default_rng(0)))
    assert np.allclose(cloud.mean(0), 0, atol=1e-5)
    assert np.linalg.norm(cloud, axis=1).max() == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- data sets
def _tar_gz(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(folder, arcname="ModelNet3/pcd")
    return out


def test_folder_and_archive_load_the_same_normalised_clouds(tmp_path: Path):
    write_pcd_tree(tmp_path / "tree")
    folder = build_data("pointfolder", root=tmp_path / "tree", num_points=32, batch_size=4)
    assert folder.classes == ["a", "b", "c"] and folder.num_classes == 3
    assert folder.task == "pointcloud_classification"
    assert folder.effective_input_size == (3, 32)
    assert folder.train.num_samples == folder.test.num_samples == 9
    archive = _tar_gz(tmp_path / "tree", tmp_path / "m3.tar.gz")
    cache = tmp_path / "cache"
    packed = build_data("pointfolder", root=archive, num_points=32, batch_size=4, cache_dir=cache)
    assert torch.equal(folder.test.points, packed.test.points)
    assert torch.equal(folder.test.labels, packed.test.labels)
    x, y = next(iter(packed.test))
    assert x.shape == (4, 3, 32) and y.tolist() == [0, 0, 0, 1]
    assert x.norm(dim=1).amax().item() <= 1.0 + 1e-5
    assert len(list(cache.glob("*.npz"))) == 1


def test_cache_is_reused_and_a_damaged_cache_is_a_clear_error(tmp_path: Path, monkeypatch):
    write_pcd_tree(tmp_path / "tree")
    archive = _tar_gz(tmp_path / "tree", tmp_path / "m3.tar.gz")
    first = load_point_clouds(archive, num_points=16, cache_dir=tmp_path / "c")
    import prunelab.data.pointcloud as pc

    def no_decode(*a, **k):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(pc, "decode_point_clouds", no_decode)
    again = load_point_clouds(archive, num_points=16, cache_dir=tmp_path / "c")
    assert np.array_equal(first.train_x, again.train_x)
    (cached,) = (tmp_path / "c").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="delete it"):
        load_point_clouds(archive, num_points=16, cache_dir=tmp_path / "c")


def test_missing_truncated_or_wrong_archive_is_one_clear_error(tmp_path: Path):
    write_pcd_tree(tmp_path / "tree")
    archive = _tar_gz(tmp_path / "tree", tmp_path / "m3.tar.gz")
    with pytest.raises(CorruptFileError, match="expected"):
        load_point_clouds(archive, sha256="0" * 64, cache_dir=tmp_path / "c")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"not a readable tar\.gz"):
        load_point_clouds(cut, cache_dir=tmp_path / "c")
    with pytest.raises(DataNotFoundError, match="looked for"):
        build_data("modelnet10", root=tmp_path)
    bad = tmp_path / "tree" / "b" / "train" / "b_0001.pcd"
    bad.write_bytes(bad.read_bytes()[:-20])
    with pytest.raises(CorruptFileError, match=r"b_0001\.pcd"):
        build_data("pointfolder", root=tmp_path / "tree")


@pytest.mark.slow
def test_modelnet10_archive_has_the_official_split():
    root = os.environ.get("PRUNELAB_DATA")
    if not root or not (Path(root) / "modelnet10-pcd.tar.gz").is_file():
        pytest.skip("needs $PRUNELAB_DATA/modelnet10-pcd.tar.gz")
    data = build_data("modelnet10", batch_size=32)
    assert data.classes[:3] == ["bathtub", "bed", "chair"] and data.num_classes == 10
    assert (data.train.num_samples, data.test.num_samples) == (3991, 908)
    assert data.effective_input_size == (3, 1024)


# ---------------------------------------------------------------- augmentation
def test_point_augmentation_is_the_pointnet2_recipe_and_reproducible():
    gen = torch.Generator().manual_seed(0)
    aug = PointAugment()
    params = draw_point_augment(64, 100, aug, gen)
    assert params["scale"].min() >= 0.8 and params["scale"].max() <= 1.25
    assert params["shift"].abs().max() <= 0.1 and params["noise"].abs().max() <= 0.05
    frac = params["drop"].float().mean(1)
    assert frac.max() <= 0.875 + 0.1 and frac.mean() == pytest.approx(0.875 / 2, abs=0.08)
    pts = torch.randn(64, 100, 3)
    out = apply_point_augment(pts, {**params, "noise": torch.zeros(64, 100, 3),
                                    "scale": torch.ones(64, 1, 3), "shift": torch.zeros(64, 1, 3)})
    d = params["drop"]
    assert torch.equal(out[d], pts[:, :1].expand_as(pts)[d]) and torch.equal(out[~d], pts[~d])
    a, b = tiny_point_data(seed=3), tiny_point_data(seed=3)
    xa, _ = next(iter(a.train))
    xb, _ = next(iter(b.train))
    assert torch.equal(xa, xb)
    state = a.train.state_dict()
    next_a = [x for x, _ in a.train]
    b.train.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(next_a, [x for x, _ in b.train], strict=True))


# ---------------------------------------------------------------- sampling ops
def test_farthest_point_sampling_and_ball_query_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    xyz = torch.rand(2, 3, 50, generator=gen)
    idx = farthest_point_sample(xyz, 10)
    for b in range(2):
        pts = xyz[b].T
        chosen = [0]
        for _ in range(9):
            d = torch.cdist(pts, pts[chosen]).amin(1)
            chosen.append(int(d.argmax()))
        assert idx[b].tolist() == chosen
    centres = xyz[:, :, :5]
    group = ball_query(xyz, centres, 0.3, 8)
    for b in range(2):
        for s in range(5):
            inside = (torch.cdist(centres[b, :, s][None], xyz[b].T)[0] <= 0.3).nonzero()[:, 0]
            want = inside[:8].tolist()
            want += [want[0]] * (8 - len(want))
            assert group[b, s].tolist() == want
    feats = torch.randn(2, 4, 50)
    assert torch.equal(group_points(feats, group)[1, :, 3, 2], feats[1, :, group[1, 3, 2]])


# ---------------------------------------------------------------- PointNet++
def _points(n: int = 2, p: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, p, generator=gen)
    return x / x.norm(dim=1, keepdim=True).amax(2, keepdim=True)


def test_pointnet2_ssg_paper_size_and_channel_groups():
    model = models.create("pointnet2_ssg", num_classes=10)
    x = _points(1, 1024)
    assert model.eval()(x).shape == (1, 10)
    cost = count(model, x)
    assert 0.8e9 < cost.flops < 0.9e9  # the shared MLPs: ~838 M MACs at 512/128 centroids
    graph = trace(model, x)
    prunable = {g.producers[0] for g in graph.prunable}
    shared = {f"sa{i}.mlp.{j}" for i in (1, 2, 3) for j in (0, 3, 6)}
    assert shared | {"head.0.0", "head.1.0"} == prunable  # every MLP/FC layer but the classifier


@pytest.mark.parametrize("seed", [0, 1])
def test_pointnet2_masked_equals_pruned_and_saves(tmp_path: Path, seed: int):
    model = tiny_pointnet()
    Trainer(model, tiny_point_data(), TrainConfig(epochs=1, steps_per_epoch=2, quiet=True)).fit()
    model.eval()
    x = _points()
    graph = trace(model, x)
    masked, pruned_out, pruned = masked_and_pruned(model, random_plan(graph, 0.5, seed), x)
    assert_close_rel(masked, pruned_out)
    assert count(pruned, x).flops < 0.6 * count(model, x).flops
    model.prunelab_arch = {"name": "pointnet2_ssg", "kwargs": {
        "num_classes": 3, "width": 0.125, "npoints": (16, 8), "radii": (0.4, 0.8),
        "nsamples": (8, 8)}}
    pruned.prunelab_arch = model.prunelab_arch
    pio.save(pruned, tmp_path / "p.pt")
    with torch.no_grad():
        assert torch.equal(pio.load(tmp_path / "p.pt")(x), pruned(x))


# ---------------------------------------------------------------- training
def test_point_cloud_task_loss_through_the_trainer_is_the_hand_computed_one():
    cb = _LossByHand(F.cross_entropy)
    trainer = Trainer(tiny_pointnet(), tiny_point_data(),
                      TrainConfig(epochs=1, steps_per_epoch=3, quiet=True, channels_last="on"),
                      [cb])
    assert trainer.task.name == "pointcloud_classification" and not trainer.channels_last
    final = trainer.fit()
    assert len(cb.pairs) == 3
    for got, want in cb.pairs:
        assert got == pytest.approx(want, rel=1e-6)
    assert {"overall_acc", "mean_class_acc", "loss", "train_overall_acc"} <= set(final)
    record = trainer.history[-1]
    assert 0 <= record["test_mean_class_acc"] <= 100


def test_tiny_pointnet_learns_the_shapes():
    data = tiny_point_data(n_train=96, augment=False)
    model = tiny_pointnet()
    cfg = TrainConfig(epochs=8, lr=0.05, quiet=True, weight_decay=0.0)
    final = Trainer(model, data, cfg).fit()
    assert final["overall_acc"] > 60 and final["mean_class_acc"] > 60  # chance: 33%


@pytest.mark.slow
def test_point_cloud_run_killed_mid_way_resumes_exactly(tmp_path: Path):
    from tests.test_train import _run_helper

    full = _run_helper(tmp_path / "full", tmp_path / "full.pt", "--points")
    assert full.returncode == 0, full.stderr
    killed = _run_helper(tmp_path / "cut", tmp_path / "cut.pt", "--points", "--kill-at-epoch", "2")
    assert killed.returncode != 0 and not (tmp_path / "cut.pt").exists()
    resumed = _run_helper(tmp_path / "cut", tmp_path / "cut.pt", "--points", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    strip = [{k: v for k, v in r.items() if k not in ("time", "img_per_s")} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("time", "img_per_s")}
                     for r in b["history"]]
    assert "test_mean_class_acc" in a["history"][-1]


def test_deepcopy_keeps_fx_leaves_working():
    model = tiny_pointnet().eval()
    x = _points()
    assert torch.equal(copy.deepcopy(model)(x), model(x))


# ---------------------------------------------------------------- command line
@pytest.mark.slow
def test_cli_trains_prunes_and_evaluates_pointnet2_with_the_task_metric(tmp_path: Path, capsys):
    import json

    from prunelab.cli import main

    write_pcd_tree(tmp_path / "tree", per_class=8, n=64)
    common = [f"data.root={tmp_path / 'tree'}", "data.name=pointfolder", "data.num_points=64",
              "data.batch_size=8", "data.holdout=0", "model_args.width=0.125",
              "model_args.npoints=[16,8]", "model_args.nsamples=[8,8]",
              "model_args.radii=[0.4,0.8]", "train.epochs=1", "train.steps_per_epoch=2",
              "train.threads=1", "latency.repeats=2",
              "latency.threads=1", "latency.batch=2"]
    assert main(["train", "model=pointnet2_ssg", *common, "--quiet",
                 "--run-dir", str(tmp_path / "train")]) == 0
    trained = tmp_path / "train" / "model.pt"
    assert main(["prune", f"checkpoint={trained}", "method=uniform", "target=0.5", *common,
                 "--run-dir", str(tmp_path / "uniform")]) == 0
    assert "| overall accuracy (%) |" in capsys.readouterr().out
    chex = ["prune", "model=pointnet2_ssg", "checkpoint=null", "method=chex", "target=0.5",
            *common, "train.epochs=2", "--quiet", "--run-dir", str(tmp_path / "chex")]
    assert main(chex) == 0
    for run in ("uniform", "chex"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        dense, pruned = summary["rows"]
        assert summary["task_metric"] == "overall_acc" and pruned["top1"] is not None
        assert abs(pruned["flops"] / dense["flops"] - 0.5) < 0.06, run
    assert main(["eval", str(tmp_path / "chex" / "model.pt"), *common[:4]]) == 0
    out = capsys.readouterr().out
    assert "overall accuracy" in out and "mean class accuracy" in out
