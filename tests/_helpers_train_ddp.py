"""One rank of the 2-process DDP test (launched by torchrun, gloo on CPU).

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m tests._helpers_train_ddp OUT_DIR EPOCHS [--resume]

Trains a BN-free CNN on synthetic data with batch 8 per rank and writes this
rank's final weights and metrics to OUT_DIR/rank<r>.pt. The test compares the
ranks with each other and with one process at batch 16.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from prunelab.train import Callback, TrainConfig, Trainer
from prunelab.train import distributed as D
from tests._helpers_train import tiny_cnn, tiny_data

PER_RANK_BATCH = 8


def ddp_config(epochs: int, run_dir: str | None, resume: bool = False) -> TrainConfig:
    """Step schedule: its first epochs do not depend on the total, so a run can be extended."""
    return TrainConfig(epochs=epochs, lr=0.05, momentum=0.9, weight_decay=5e-4,
                       schedule="step", milestones=(1.5,), warmup_epochs=1, seed=1, threads=1,
                       quiet=True, run_dir=run_dir, resume=resume)


def ddp_data():
    return tiny_data(batch_size=PER_RANK_BATCH, n_train=128, n_test=41)


class GradsAgree(Callback):
    """After backward, DDP has averaged gradients: every rank holds the same ones."""

    def after_backward(self, trainer):
        flat = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
        gathered = D.all_gather_object(flat)
        assert all(torch.equal(gathered[0], g) for g in gathered), "gradients differ"


class Rebuild(Callback):
    """Rebuilds optimizer and DDP wrapper mid-run: must not change the trajectory."""

    def on_epoch_start(self, trainer, epoch):
        if epoch == 1:
            trainer.rebuild_optimizer()


def main() -> None:
    out = Path(sys.argv[1])
    epochs = int(sys.argv[2])
    resume = "--resume" in sys.argv[3:]
    ctx = D.init_distributed()
    assert ctx.world_size == 2, ctx
    torch.manual_seed(0)
    model = tiny_cnn(bn=False)
    trainer = Trainer(model, ddp_data(), ddp_config(epochs, str(out / "run"), resume),
                      callbacks=[GradsAgree(), Rebuild()])
    assert trainer.train_model is not trainer.model  # wrapped in DDP
    final = trainer.fit()
    torch.save({"model": model.state_dict(), "final": final, "history": trainer.history,
                "steps_per_epoch": trainer.steps_per_epoch, "rank": ctx.rank},
               out / f"rank{ctx.rank}.pt")
    D.cleanup()


if __name__ == "__main__":
    main()
