"""CHEX on a detector: `round_to` keeps every pruned width a multiple (fast kernels)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.graph import trace
from prunelab.methods.chex import ChexCallback, ChexOptions, surgery
from prunelab.models.detection_core import tensor_program
from prunelab.train import TrainConfig, Trainer
from tests._helpers_detection import SIZE, tiny_detection_data, tiny_ssd

pytestmark = pytest.mark.usefixtures("one_thread")


def _chex_widths(tmp_path: Path, round_to: int) -> tuple[ChexCallback, list[int], list[int]]:
    data = tiny_detection_data(tmp_path / f"data{round_to}")
    model = tiny_ssd()
    x = torch.rand(2, 3, SIZE, SIZE)
    graph = trace(model.eval(), x)
    opts = ChexOptions(interval=1, t_max=0.5, feature_images=2, round_to=round_to)
    cb = ChexCallback(graph, 0.5, "flops", opts, seed=0)
    cfg = TrainConfig(epochs=2, steps_per_epoch=1, lr=0.01, warmup_epochs=0, quiet=True,
                      device="cpu", threads=1, eval_every=10)
    Trainer(model, data, cfg, callbacks=[cb]).fit()
    pruned, diff = surgery(cb, model, x)
    assert diff < 1e-4  # masked == pruned on the raw head outputs
    widths = [int(cb.mask.masks[g].sum()) for g in cb.groups]
    sizes = [graph.groups[g].size for g in cb.groups]
    assert cb.timeline[-1]["alive_flops"] == pytest.approx(0.5, abs=0.05)
    with torch.no_grad():
        assert all(torch.isfinite(t).all() for t in tensor_program(pruned.eval())(x))
    return cb, widths, sizes


@pytest.mark.slow
def test_chex_on_ssdlite_rounds_widths_to_8_only_when_asked(tmp_path: Path) -> None:
    _, exact, sizes = _chex_widths(tmp_path, round_to=1)  # the paper: exact widths
    assert any(w % 8 for w, s in zip(exact, sizes, strict=True) if s >= 8)
    _, rounded, sizes = _chex_widths(tmp_path, round_to=8)
    assert all(w % 8 == 0 for w, s in zip(rounded, sizes, strict=True) if s >= 8)
