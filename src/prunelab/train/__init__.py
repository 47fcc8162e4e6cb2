"""The training loop: `Trainer(model, data, TrainConfig(...), callbacks=[...]).fit()`.

Modules: config (TrainConfig, presets), optim (parameter groups, per-step lr
schedule), callbacks (the hooks methods implement), checkpoint (atomic save,
safe load, random states), distributed (torchrun/DDP helpers), progress
(stderr lines and metrics.jsonl), averaging (EMA / SWA weight averages), distill
(knowledge distillation from a teacher), tasks (what a batch, a loss and the metrics
are), loop (Trainer).
"""

from prunelab.train.averaging import WeightAveraging
from prunelab.train.callbacks import Callback
from prunelab.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from prunelab.train.config import PRESETS, TrainConfig
from prunelab.train.detection_tasks import Detection, InstanceSegmentation  # registers both
from prunelab.train.distill import Distillation
from prunelab.train.distributed import DistContext, init_distributed
from prunelab.train.loop import Trainer, resolve_amp, resolve_device
from prunelab.train.optim import LRSchedule, build_optimizer, param_groups
from prunelab.train.progress import METRICS_NAME, MetricsLog, Progress, read_metrics
from prunelab.train.tasks import (
    PointCloudClassification,
    Task,
    available_tasks,
    evaluate_model,
    task_for,
)

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "PRESETS",
    "Callback",
    "Detection",
    "DistContext",
    "Distillation",
    "InstanceSegmentation",
    "LRSchedule",
    "MetricsLog",
    "PointCloudClassification",
    "Progress",
    "Task",
    "TrainConfig",
    "Trainer",
    "WeightAveraging",
    "available_tasks",
    "build_optimizer",
    "evaluate_model",
    "init_distributed",
    "load_checkpoint",
    "param_groups",
    "read_metrics",
    "resolve_amp",
    "resolve_device",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "task_for",
]
