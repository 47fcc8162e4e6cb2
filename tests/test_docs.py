"""The documentation cannot drift: every command the README and `prunelab --help` show runs.

Commands are read from the README's ```sh blocks and from the --help epilog,
placeholders (`runs/prune-.../model.pt`, `a.pt`) are replaced by real run
folders made here, and short overrides (synthetic data, one epoch of two steps)
keep each run to seconds. `torchrun ... -m prunelab X` runs as `prunelab X`:
the two-process path itself is tested in test_distributed.py. Every shipped
config must load and pass the checks the command line makes before a run.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from prunelab.cli import main
from prunelab.cli.compare_cmd import expand_arms, load_compare
from prunelab.cli.config import build_config
from prunelab.cli.main import EPILOG
from prunelab.cli.setup import check_inputs, make_method, train_config
from prunelab.cli.train_cmd import make_average
from tests.test_cli import SYNTH

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# The league's epoch budget stays (every arm is checked against it), each epoch one step.
COMPARE_SHORT = [
    "kd=none", "base.train.steps_per_epoch=1", "base.train.batch_size=null",
    "base.train.threads=1", "base.latency.repeats=2", "base.latency.threads=1",
    *[f"base.{s}" for s in SYNTH if s.startswith("data.")],
]  # fmt: skip
COMPARE_CONFIGS = sorted((REPO / "configs" / "compare").glob("*.yaml"))
# Per method, the options that shrink its search to a few steps (the recipe's stay otherwise).
TINY = {
    "random": ["method.candidates=2", "method.bn_batches=1", "data.holdout=32"],
    "dwr": ["method.rounds=1", "method.round_epochs=1", "method.probe_batches=1",
            "data.holdout=32"],
}


def _shown_commands() -> list[str]:
    """`prunelab ...` and `torchrun ...` lines of README sh blocks and the --help epilog."""
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    lines += [line.strip() for line in EPILOG.splitlines()]
    commands = []
    for line in lines:
        for part in line.split("#")[0].split(";"):
            part = part.strip()
            if part.startswith(("prunelab ", "torchrun ")) or part == "prunelab":
                commands.append(part)
    return list(dict.fromkeys(commands))


def test_the_docs_show_commands() -> None:
    commands = _shown_commands()
    assert len(commands) >= 10 and any(c.startswith("torchrun") for c in commands)
    assert "prunelab prune configs/random_resnet20_cifar10.yaml target=0.4 train.epochs=10" in (
        commands
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained run and a pruned run, to stand in for the docs' placeholders."""
    root = tmp_path_factory.mktemp("docs")
    torch.set_num_threads(1)
    train, prune = root / "train", root / "prune"
    assert main(["train", "model=resnet20", *SYNTH, "--quiet", "--run-dir", str(train)]) == 0
    args = ["prune", f"checkpoint={train / 'model.pt'}", *SYNTH, "--quiet", "--run-dir"]
    assert main([*args, str(prune)]) == 0
    return {"root": root, "train": train, "prune": prune}


def _runnable(command: str, made: dict[str, Path], tmp: Path) -> list[str]:
    """The shown command with placeholders made real and overrides that keep it short."""
    words = shlex.split(command)
    if words[0] == "torchrun":
        words = ["prunelab", *words[words.index("prunelab") + 1 :]]
    args = words[1:]
    models = iter([made["train"] / "model.pt", made["prune"] / "model.pt"])
    runs = iter([made["prune"], made["train"]])
    for i, word in enumerate(args):
        placeholder = "..." in word or "*" in word or not (REPO / word).exists()
        if word.endswith(".pt") and placeholder:
            args[i] = str(next(models))
        elif word.startswith("runs/") and placeholder:
            if args[i - 1] == "--run-dir":  # --resume continues a copy of a real run
                args[i] = str(shutil.copytree(made["train"], tmp / "resumed"))
            else:
                args[i] = str(next(runs))
        elif word.startswith("configs/"):
            args[i] = str(REPO / word)
    command_name = args[0]
    if command_name == "compare":  # one arm of the league: the rest is the same loop
        if "--arms" not in args:
            args += ["--arms", str(load_compare(args[1], [])["baseline"])]
        args += [*COMPARE_SHORT, "--quiet", "--run-dir", str(tmp / "compare")]
    elif command_name in ("prune", "train"):
        files = [a for a in args[1:] if a.endswith(".yaml")]
        method = build_config({}, files, [])["method"]["name"] if files else None
        # a recipe's own train.batch_size would not fit the synthetic set: the loader's (32)
        args += [*SYNTH, "train.batch_size=null", *TINY.get(method, []), "--quiet"]
        if "--run-dir" not in args:
            args += ["--run-dir", str(tmp / "run")]
    elif command_name == "eval":
        args += SYNTH[:4]
    elif command_name == "bench":
        args += ["--batch", "1", "--threads", "1", "--repeats", "1"]
    elif command_name == "report":
        args += ["--out", str(tmp / "report")]
    return args


@pytest.mark.parametrize("command", _shown_commands())
def test_every_command_the_docs_show_runs(command: str, made: dict[str, Path], tmp_path: Path,
                                          capsys) -> None:  # fmt: skip
    args = _runnable(command, made, tmp_path)
    assert main(args) == 0, (command, args, capsys.readouterr().err)


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = re.search(r"## The engine in five lines\n\n```python\n(.*?)```", README, flags=re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})
    assert (tmp_path / "small.pt").is_file()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_validates(path: Path) -> None:
    """The checks a run makes before reading data: names, options and their types."""
    config = build_config({}, [str(path)], [])
    check_inputs(config)
    if config.get("method"):
        make_method(config)
    train = train_config(config, {})
    make_average(config, train.epochs)


@pytest.mark.parametrize("path", COMPARE_CONFIGS, ids=[p.name for p in COMPARE_CONFIGS])
def test_every_shipped_compare_config_loads_and_validates(path: Path) -> None:
    """Each arm of a league is a prune configuration that passes the same checks."""
    arms = expand_arms(load_compare(str(path), []))
    assert arms
    for arm in arms:
        check_inputs(arm.config)
        make_method(arm.config)
        train_config(arm.config, {})
