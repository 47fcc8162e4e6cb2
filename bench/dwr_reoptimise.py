"""DWR's optimum for the collected ResNet-20 points under the paper's and the measured cost.

Reads bench/results/dwr_points.json (the 13 points of bench/results/dwr.md, RESULTS §6,
collected under the paper's schedule), fits the rank-1 K=3 accuracy model as `dwr` does,
and maximises it on d*w^2*r^2 = T and on the engine-measured cost C(d, w, r) = T (within
the collected range). The cost model is fitted on the committed checkpoint's architecture; the DBP
block order it uses comes from probes on synthetic images, which does not change the
cost (every removable ResNet-20 block costs the same).

    OMP_NUM_THREADS=1 .venv/bin/python bench/dwr_reoptimise.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import prunelab
from prunelab.data import build_data
from prunelab.methods import PruneTask, get_method
from prunelab.methods.dwr import Collector
from prunelab.methods.dwr_cost import maximize_under_cost
from prunelab.methods.dwr_model import maximize
from prunelab.train import TrainConfig

POINTS = Path("bench/results/dwr_points.json")
CHECKPOINT = Path("src/prunelab/checkpoints/resnet20_cifar10_jpg.pt")


def main() -> None:
    torch.set_num_threads(1)
    points = json.loads(POINTS.read_text())
    x = np.array([[p["d"], p["w"], p["r"]] for p in points])
    y = np.array([p["accuracy"] / 100 for p in points])
    method = get_method("dwr")(probe_batches=2)
    accuracy = method.fit_model(x, y)
    data = build_data("synthetic", batch_size=32, n_train=128, n_test=32, holdout=64,
                      image_size=32, seed=0)  # fmt: skip
    task = PruneTask(model=prunelab.load(CHECKPOINT), data=data, target=0.5, quiet=True,
                     train=TrainConfig(epochs=1, quiet=True))  # fmt: skip
    col = Collector(task, method.options)
    cost = col.cost_model()
    lower = [float(x[:, j].min()) for j in range(3)]
    paper = maximize(accuracy, 0.5)
    measured = maximize_under_cost(accuracy, cost, 0.5, lower=lower)
    out = {
        "cost_model_max_rel_error": cost.max_rel_error,
        "measured_cost_of_d_alone_at_0": float(cost([0, 1, 1])[0]),
        "collected_range_lower": lower,
        "paper": {"point": paper.point, "predicted_top1": 100 * paper.value,
                  "measured_cost": float(cost(paper.point)[0])},
        "measured": {"point": measured.point, "predicted_top1": 100 * measured.value,
                     "measured_cost": float(cost(measured.point)[0])},
    }  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
