"""Fuzzing the command line's `key=value` settings: any input ends in success or exit 2.

Exit code 1 (a traceback) is what these tests rule out: every setting a user
can type is either used or refused with one clear line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunelab.cli import main
from prunelab.cli import setup as cli_setup
from tests.test_cli import SYNTH

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = [
    "target", "metric", "seed", "model", "checkpoint", "reference", "quiet", "name", "run_dir",
    "method", "method.name", "method.criterion", "method.round_to", "method.finetune_epochs",
    "train.epochs", "train.lr", "train.batch_size", "train.schedule", "train.milestones",
    "train.warmup_epochs", "train.momentum", "train.steps_per_epoch", "train.min_lr",
    "train.label_smoothing", "train.grad_clip", "train.device", "train.amp", "train.betas",
    "train.channels_last", "train.optimizer", "train.eval_every", "train.threads",
    "data", "data.name", "data.batch_size", "data.holdout", "data.resolution", "data.cutout",
    "data.n_train", "data.n_test", "data.image_size", "data.num_classes", "data.channels",
    "data.noise", "data.pad", "data.augment", "data.eval_batch_size", "data.workers",
    "latency", "latency.batch", "latency.repeats", "latency.threads", "latency.repeat",
    "average", "average.decay", "average.start_epoch", "train", "unknown", "a.b.c",
]  # fmt: skip
WORDS = [
    "null", "true", "false", "abc", "[1, 2]", "[]", "{}", "{a: 1}", "1e-3", "-1", "0", "1",
    "2", "0.5", "1.0", "''", "~", ".nan", ".inf", "-.inf", "1e9", "1e-9", "uniform", "chex",
    "random", "l1", "resnet20", "synthetic", "cifar10_jpg", "flops", "params", "=", "a=b",
    "[0.9, 0.99]", "{name: chex}", "{name: uniform, round_to: 4}", "cosine", "sgd", "cpu",
    "builtin:resnet20_cifar10_jpg", "builtin:nope", "/nonexistent", "'", "\"", "[", "{", ":",
]  # fmt: skip

small_values = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(WORDS))
any_values = st.one_of(small_values, st.text(max_size=12), st.floats().map(repr))
known_key = st.sampled_from(KEYS)
any_key = st.one_of(known_key, st.text(min_size=0, max_size=8))


def _run(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # argparse refusing an option: its usage line and exit 2
        return int(exc.code or 0)


class _DataWasRead(Exception):
    pass


def _refuse_data(*args: object, **kwargs: object) -> None:
    raise _DataWasRead


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    command=st.sampled_from(["prune", "train"]),
    settings_=st.lists(
        st.one_of(st.tuples(any_key, any_values).map("=".join), st.text(max_size=12)),
        min_size=1, max_size=3,
    ),
)  # fmt: skip
def test_any_setting_is_used_or_refused_before_data(command: str, settings_: list[str]) -> None:
    """Up to the data set being read (replaced here): exit 2 or on to the data, nothing else."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_setup, "build_data", _refuse_data)
        args = [command, *SYNTH, *settings_, "--quiet", "--run-dir", str(Path(tmp) / "run")]
        try:
            assert _run(args) == 2
        except _DataWasRead:
            return
        assert not (Path(tmp) / "run").exists()


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    command=st.sampled_from(["prune", "train"]),
    settings_=st.lists(st.tuples(known_key, small_values).map("=".join), min_size=1, max_size=2),
)
def test_any_setting_runs_or_is_refused(command: str, settings_: list[str]) -> None:
    """The whole run on tiny synthetic data: success, or one clear error (exit 2)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [command, *SYNTH, *settings_, "--quiet", "--run-dir", str(Path(tmp) / "run")]
        assert _run(args) in (0, 2)
