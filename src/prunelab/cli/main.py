"""The `prunelab` command line: train, prune, eval, bench, export, report, models, methods."""

from __future__ import annotations

import argparse
import sys

from prunelab.cli.config import DEMO, TRAIN_DEFAULTS, build_config
from prunelab.errors import ConfigError, PrunelabError

EPILOG = """examples:
  prunelab prune                                   # the offline demo (ResNet-20, CIFAR-10 JPEG)
  prunelab prune configs/random_cifar.yaml target=0.4 train.epochs=10
  prunelab train model=resnet56 train.epochs=30
  torchrun --nproc_per_node 2 -m prunelab train model=resnet20
  prunelab eval runs/prune-*/model.pt data.name=cifar10_jpg
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
    sub.add_parser("models", help="list model names")
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
        print(f"prunelab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunelab {args.command}: interrupted", file=sys.stderr)
        return 130


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
                config.setdefault("train", {})["resume"] = True
                if not config.get("run_dir"):
                    raise ConfigError("--resume needs --run-dir (the folder of the run)")
            run_train(config)
    elif args.command == "eval":
        _, overrides = _split(args.settings)
        config = build_config({"data": {"name": "cifar10_jpg"}, "seed": 0}, [], overrides)
        commands.run_eval(args.model, config)
    elif args.command == "bench":
        commands.run_bench(args.models, args.batch, args.threads, args.repeats, args.runtime)
    elif args.command == "export":
        commands.run_export(args.model, args.format, args.fold_bn, args.opset, args.out)
    elif args.command == "report":
        commands.run_report(args.runs, args.out)
    elif args.command == "models":
        commands.run_models()
    elif args.command == "methods":
        commands.run_methods()
    return 0
