"""The `prunelab` command line: train, prune, compare, eval, bench, export, report, models."""

from __future__ import annotations

import argparse
import os
import sys

from prunelab.cli.config import DEMO, TRAIN_DEFAULTS, build_config
from prunelab.errors import ConfigError, PrunelabError

EPILOG = """examples:
  prunelab prune                                   # the offline demo (ResNet-20, CIFAR-10 JPEG)
  prunelab prune configs/random_resnet20_cifar10.yaml target=0.4 train.epochs=10
  prunelab train model=resnet56 train.epochs=30
  torchrun --nproc_per_node 2 -m prunelab train model=resnet20
  prunelab eval runs/prune-*/model.pt data.name=cifar10_jpg
  prunelab compare configs/compare/posttrain_resnet20_cifar10.yaml --arms uniform-l1-r8
  prunelab report runs/prune-a runs/prune-b
FLOPs are multiply-accumulates (MACs), as in the pruning papers."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prunelab",
        description="Structured pruning of convolutional networks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (("prune", "prune a model with a method (default: the demo)"),
                           ("train", "train a model")):  # fmt: skip
        c = sub.add_parser(name, help=helptext)
        c.add_argument("settings", nargs="*", help="CONFIG.yaml files and key=value overrides")
        c.add_argument("--quiet", action="store_true", help="no progress output")
        c.add_argument("--run-dir", help="where to write the run folder")
        if name == "train":
            c.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    e = sub.add_parser("eval", help="evaluate a saved model")
    e.add_argument("model", help="a model file (prunelab.save) or builtin:NAME")
    e.add_argument("settings", nargs="*", help="key=value overrides, e.g. data.name=cifar10_jpg")
    b = sub.add_parser("bench", help="CPU latency of saved models, the first as baseline")
    b.add_argument("models", nargs="+")
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--repeats", type=int, default=20)
    c = sub.add_parser("compare", help="run arms at one budget and write a leaderboard")
    c.add_argument("config", help="a compare configuration (configs/compare/*.yaml)")
    c.add_argument("settings", nargs="*", help="key=value overrides, e.g. base.train.threads=1")
    c.add_argument("--arms", help="comma-separated arms to run (default: all)")
    c.add_argument("--seeds", help="comma-separated seeds, replacing the config's")
    c.add_argument("--run-dir", help="the compare folder (default runs/compare-<name>)")
    c.add_argument("--report-only", action="store_true",
                   help="run nothing; rewrite the leaderboard from the finished arms")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    b.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default="torch",
                   help="where to time them (onnxruntime, openvino: pip install prunelab[deploy])")
    x = sub.add_parser("export", help="write a saved model as ONNX or TorchScript, checked")
    x.add_argument("model", help="a model file (prunelab.save) or builtin:NAME")
    x.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    x.add_argument("--fold-bn", action="store_true", help="fold batch norms into convolutions")
    x.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    x.add_argument("--out", help="output file (default: beside the model)")
    r = sub.add_parser("report", help="compare run folders in one table and plot")
    r.add_argument("runs", nargs="+")
    r.add_argument("--out", default="runs/report")
    mo = sub.add_parser("models", help="list model names")
    mo.add_argument("--timm", action="store_true", help="list every timm model too")
    sub.add_parser("methods", help="list pruning methods and their options")
    return p


def _split(settings: list[str]) -> tuple[list[str], list[str]]:
    files = [s for s in settings if "=" not in s]
    overrides = [s for s in settings if "=" in s]
    return files, overrides


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Settings may come after options (`train --resume k=v`): collect leftovers as settings.
    args, extra = parser.parse_known_args(argv)
    flags = [e for e in extra if e.startswith("-")]
    if flags or (extra and not hasattr(args, "settings")):
        parser.error(f"unrecognized arguments: {' '.join(flags or extra)}")
    if extra:
        args.settings = [*args.settings, *extra]
    try:
        return _dispatch(args)
    except PrunelabError as exc:
        return _fail(args.command, str(exc))
    except BrokenPipeError:  # `prunelab models | head`: the reader left, as with SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.filename is None:
            raise
        return _fail(args.command, f"{exc.filename}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        print(f"prunelab {args.command}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, message: str) -> int:
    """One line on stderr (multi-line messages, e.g. from torch.fx, are joined) and exit 2."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"prunelab {command}: error: {text}", file=sys.stderr)
    return 2


def _dispatch(args: argparse.Namespace) -> int:
    from prunelab.cli import commands

    if args.command in ("prune", "train"):
        files, overrides = _split(args.settings)
        defaults = DEMO if args.command == "prune" else TRAIN_DEFAULTS
        if args.command == "prune" and files:
            defaults = {k: v for k, v in DEMO.items() if k in ("latency", "seed", "quiet")}
        config = build_config(defaults, files, overrides)
        if args.quiet:
            config["quiet"] = True
        if args.run_dir:
            config["run_dir"] = args.run_dir
        if args.command == "prune":
            from prunelab.cli.prune_cmd import run_prune

            run_prune(config)
        else:
            from prunelab.cli.train_cmd import run_train

            if args.resume:
                if not config.get("run_dir"):
                    raise ConfigError("--resume needs --run-dir (the folder of the run)")
                config["train"] = {**(config.get("train") or {}), "resume": True}
            run_train(config)
    elif args.command == "eval":
        _, overrides = _split(args.settings)
        config = build_config({"data": {"name": "cifar10_jpg"}, "seed": 0}, [], overrides)
        commands.run_eval(args.model, config)
    elif args.command == "bench":
        commands.run_bench(args.models, args.batch, args.threads, args.repeats, args.runtime)
    elif args.command == "compare":
        return _compare(args)
    elif args.command == "export":
        commands.run_export(args.model, args.format, args.fold_bn, args.opset, args.out)
    elif args.command == "report":
        commands.run_report(args.runs, args.out)
    elif args.command == "models":
        commands.run_models(args.timm)
    elif args.command == "methods":
        commands.run_methods()
    return 0


def _compare(args: argparse.Namespace) -> int:
    from prunelab.cli.compare_cmd import run_compare

    def listed(text: str | None, what: str) -> list[str] | None:
        if text is None:
            return None
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise ConfigError(f"--{what} needs a comma-separated list")
        return items

    seeds = listed(args.seeds, "seeds")
    try:
        seed_values = None if seeds is None else [int(s) for s in seeds]
    except ValueError:
        raise ConfigError(f"--seeds must be whole numbers, got {args.seeds!r}") from None
    _, off = run_compare(args.config, args.settings, listed(args.arms, "arms"), seed_values,
                         quiet=args.quiet, run_dir=args.run_dir,
                         report_only=args.report_only)  # fmt: skip
    if off:
        print(f"prunelab compare: error: arm(s) {', '.join(off)} missed the cost target by more "
              "than the budget tolerance (see leaderboard.md)", file=sys.stderr)
        return 2
    return 0
