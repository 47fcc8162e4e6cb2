"""Detection end to end: `prunelab train/prune/eval` of SSD-lite on a tiny YOLO folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunelab import io, models
from prunelab.cli import main
from prunelab.graph import prune, trace
from prunelab.graph.selfcheck import half_plan, output_difference
from prunelab.models.detection_core import tensor_program
from prunelab.train import TrainConfig, Trainer
from tests._helpers_detection import SIZE, tiny_detection_data, tiny_yolo_folder

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "chex_ssdlite_coco128.yaml")


def _args(root: Path) -> list[str]:
    return [CONFIG, "data.name=yolo", f"data.root={root}", f"data.image_size={SIZE}",
            "data.batch_size=2", "train.epochs=2", "train.eval_every=2", "train.threads=1",
            "train.warmup_epochs=0", "train.lr=0.01", "latency.repeats=1", "--quiet"]


@pytest.mark.slow
def test_train_prune_uniform_and_chex_then_eval_report_map(tmp_path: Path, capsys) -> None:
    root = tiny_yolo_folder(tmp_path / "data")
    assert main(["train", *_args(root), "--run-dir", str(tmp_path / "dense")]) == 0
    dense = json.loads((tmp_path / "dense" / "summary.json").read_text())
    assert 0.0 <= dense["rows"][0]["top1"] <= 100.0  # the headline: box mAP, in percent
    assert "mAP@[.5:.95]" in (tmp_path / "dense" / "report.md").read_text()
    for method in ("uniform", "chex"):
        out = tmp_path / method
        assert main(["prune", *_args(root), f"method={method}", "--run-dir", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["task_metric"] == "map"
        pruned = summary["rows"][1]
        assert pruned["flops"] < 0.6 * summary["rows"][0]["flops"]
        assert 0.0 <= pruned["top1"] <= 100.0
    capsys.readouterr()
    model = io.load(tmp_path / "chex" / "model.pt")
    assert model.transform.fixed_size == (SIZE, SIZE)  # the recipe keeps the input size
    assert main(["eval", str(tmp_path / "chex" / "model.pt"), "data.name=yolo",
                 f"data.root={root}", f"data.image_size={SIZE}"]) == 0
    assert "mAP@.5" in capsys.readouterr().out


def test_a_detector_needs_detection_data_and_a_saved_pruned_detector_reloads(tmp_path: Path
                                                                             ) -> None:
    assert main(["train", "model=ssdlite320_mobilenet_v3_large", "data.name=synthetic",
                 "data.holdout=0", "checkpoint=null", "--quiet",
                 "--run-dir", str(tmp_path / "x")]) == 2
    torch.manual_seed(0)
    model = models.create("ssdlite320_mobilenet_v3_large", num_classes=3, image_size=SIZE)
    x = torch.rand(2, 3, SIZE, SIZE)
    pruned = prune(model.eval(), half_plan(trace(model, x))).eval()
    io.save(pruned, tmp_path / "m.pt")
    again = io.load(tmp_path / "m.pt")
    with torch.no_grad():
        assert output_difference(tensor_program(pruned)(x), tensor_program(again)(x)) == 0.0


@pytest.mark.slow
def test_mask_rcnn_trains_and_reports_box_and_mask_map(tmp_path: Path) -> None:
    data = tiny_detection_data(tmp_path, masks=True)
    assert data.task == "instance_segmentation"
    torch.manual_seed(0)
    model = models.create("maskrcnn_resnet50_fpn", num_classes=data.num_classes,
                          image_size=SIZE)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, lr=0.005, warmup_epochs=0, quiet=True,
                      device="cpu", threads=1)
    final = Trainer(model, data, cfg).fit()
    assert {"map", "map50", "mask_map", "mask_map50"} <= set(final)
    assert all(0.0 <= final[k] <= 100.0 for k in ("map", "mask_map"))
    assert final["train_loss"] > 0
