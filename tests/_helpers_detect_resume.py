"""Child process of the detection kill-and-resume test.

    python -m tests._helpers_detect_resume DATA_DIR RUN_DIR OUT [--kill-at-epoch K] [--resume]

Trains the tiny SSD-lite on the tiny YOLO folder (with flips) for 3 epochs,
SIGKILLing itself at the start of epoch K when asked (after epoch K-1's
checkpoint is on disk); writes the final weights and history to OUT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from prunelab.train import TrainConfig, Trainer
from tests._helpers_detection import tiny_detection_data, tiny_ssd
from tests._helpers_train_resume import KillAt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("run_dir")
    ap.add_argument("out")
    ap.add_argument("--kill-at-epoch", type=int, default=-1)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    data = tiny_detection_data(Path(args.data_dir), augment=True, seed=5)
    model = tiny_ssd()
    cfg = TrainConfig(epochs=3, lr=0.02, momentum=0.9, weight_decay=4e-5, schedule="cosine",
                      warmup_epochs=0, seed=3, deterministic=True, threads=1, quiet=True,
                      eval_every=3, run_dir=args.run_dir, resume=args.resume)
    trainer = Trainer(model, data, cfg, callbacks=[KillAt(args.kill_at_epoch)])
    trainer.fit()
    torch.save({"model": model.state_dict(), "history": trainer.history}, args.out)


if __name__ == "__main__":
    main()
