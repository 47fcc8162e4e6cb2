"""Two CPU processes on gloo: DDP training equals one process with the full batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab.train import CHECKPOINT_NAME, METRICS_NAME, Trainer, load_checkpoint
from prunelab.train import distributed as D
from tests._helpers_train import tiny_cnn
from tests._helpers_train_ddp import PER_RANK_BATCH, Rebuild, ddp_config, ddp_data

REPO = Path(__file__).resolve().parents[1]


def _torchrun(out: Path, epochs: int, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests._helpers_train_ddp", str(out), str(epochs), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _single_process(epochs: int) -> tuple[dict[str, torch.Tensor], dict, list]:
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(0)
        model = tiny_cnn(bn=False)
        data = ddp_data()
        data.train.batch_size = 2 * PER_RANK_BATCH
        tr = Trainer(model, data, ddp_config(epochs, None), callbacks=[Rebuild()])
        final = tr.fit()
    finally:
        torch.set_num_threads(threads)
    return model.state_dict(), final, tr.history


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_single_process_context_is_a_no_op():
    ctx = D.init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    t = torch.ones(3)
    assert torch.equal(D.all_reduce_sum(t), torch.ones(3))
    assert D.all_gather_object(5) == [5]
    model = tiny_cnn()
    assert D.wrap_ddp(model, torch.device("cpu")) is model


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_full_batch(tmp_path: Path):
    run = _torchrun(tmp_path, 2)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # both ranks end with identical weights and identical (all-reduced) metrics
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    assert r0["final"]["top1"] == r1["final"]["top1"]
    assert r0["final"]["loss"] == pytest.approx(r1["final"]["loss"], abs=1e-12)
    assert r0["steps_per_epoch"] == 128 // (2 * PER_RANK_BATCH)

    # ... and match one process with the full batch (SGD, no BN)
    single, final, history = _single_process(2)
    assert _close(single, r0["model"]) < 1e-5
    assert r0["final"]["top1"] == pytest.approx(final["top1"])
    assert r0["final"]["loss"] == pytest.approx(final["loss"], rel=1e-4)
    assert [h["train_loss"] for h in r0["history"]] == pytest.approx(
        [h["train_loss"] for h in history], rel=1e-4)

    # only rank 0 wrote the log and the checkpoint
    log = [json.loads(x) for x in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    assert [r["kind"] for r in log] == ["start", "epoch", "epoch", "end"]
    assert log[0]["world_size"] == 2 and log[0]["global_batch"] == 16
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["epoch"] == 2

    # resuming the 2-process run for a third epoch still matches one process
    run = _torchrun(tmp_path, 3, "--resume")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    single3, _, _ = _single_process(3)
    assert _close(single3, r0["model"]) < 1e-5
