"""Child process of the kill-and-resume test.

    python -m tests._helpers_train_resume RUN_DIR OUT [--kill-at-epoch K] [--resume] [--points]

Trains a small BN + dropout CNN on augmented synthetic data for 4 epochs with a
stateful callback whose extra loss depends on its state (so a lost callback
state would change the weights). With --kill-at-epoch K the process SIGKILLs
itself at the start of epoch K (after epoch K-1's checkpoint is on disk).
Writes the final weights, history and callback count to OUT. --points runs the
same on tiny point clouds with a tiny PointNet++ (the point-cloud task).
"""

from __future__ import annotations

import argparse
import os
import signal

import torch

from prunelab.train import Callback, TrainConfig, Trainer
from tests._helpers_points import tiny_point_data, tiny_pointnet
from tests._helpers_train import tiny_cnn, tiny_data


class Stateful(Callback):
    def __init__(self) -> None:
        self.count = 0

    def extra_loss(self, trainer, outputs, targets):
        model = trainer.model
        head = (model.head[-1] if hasattr(model, "head") else model[-1]).weight
        return 1e-3 * (self.count % 7) * head.pow(2).sum()

    def on_step_end(self, trainer):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = int(state["count"])


class KillAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("out")
    ap.add_argument("--kill-at-epoch", type=int, default=-1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--points", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    if args.points:
        model, data = tiny_pointnet(dropout=0.2), tiny_point_data(n_train=48, n_test=24)
    else:
        model = tiny_cnn(dropout=0.2)
        data = tiny_data(batch_size=16, n_train=96, n_test=32)
    cfg = TrainConfig(epochs=4, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                      schedule="cosine", warmup_epochs=1, label_smoothing=0.1, seed=3,
                      deterministic=True, threads=1, quiet=True, run_dir=args.run_dir,
                      resume=args.resume)
    stateful = Stateful()
    trainer = Trainer(model, data, cfg, callbacks=[stateful, KillAt(args.kill_at_epoch)])
    trainer.fit()
    torch.save({"model": model.state_dict(), "history": trainer.history,
                "counter": stateful.count, "steps_per_epoch": trainer.steps_per_epoch}, args.out)


if __name__ == "__main__":
    main()
