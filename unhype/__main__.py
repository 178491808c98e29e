"""Command line: `python -m unhype demo` and `python -m unhype train CONFIG`.

Arguments are checked before anything heavy is imported: `--help` and a wrong argument answer at
once, with one line and exit status 2. So does every error of `train` a user can fix (the config,
the model file, ComfyUI, a folder or disk it cannot write): one line, no traceback, status 2.
"""

import argparse
import os
import sys

from .choices import OBJECTIVES
from .families import FAMILIES, PROVING_GROUND
from .world.vocabulary import COLOURS


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _writable_folder(parser: argparse.ArgumentParser, path: str) -> None:
    from .files import cannot_write

    reason = cannot_write(path)
    if reason:
        parser.error(f"--out {path}: cannot write there ({reason}); pick a folder you can "
                     "write to")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unhype", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="erase a colour in the bundled proving-ground world (CPU, minutes)")
    demo.add_argument("--concept", default="red", choices=[c.word for c in COLOURS],
                      help="colour to erase")
    demo.add_argument("--out", default="unhype-demo", help="output folder (default: unhype-demo)")
    demo.add_argument("--objective", default=OBJECTIVES[0], choices=OBJECTIVES,
                      help="trajectory (the Trainer's default, the paper's) or direct (ablation)")
    demo.add_argument("--steps", type=_count(0), default=0,
                      help="training steps; 0 (default) = the Trainer's default for the proving "
                           f"ground ({FAMILIES[PROVING_GROUND].training_defaults['steps']})")
    demo.add_argument("--samples", type=_count(1), default=argparse.SUPPRESS,
                      help="images per prompt set when measuring (others get 3x)")
    demo.add_argument("--seed", type=_count(0), default=0)
    demo.add_argument("--cores", type=_count(1), default=None,
                      help="CPU cores to use, 1 or 2 (default: the cores the load of the last "
                           "minute leaves free)")

    train = commands.add_parser("train", help="train a network on a ComfyUI model, headless")
    train.add_argument("config", help="TOML or JSON file (see docs/training.md, Headless training)")

    args = parser.parse_args(argv)
    if args.command == "demo":
        _writable_folder(demo, args.out)
        from .demo import run_demo

        options = {k: v for k, v in vars(args).items() if k != "command"}
        run_demo(**options)
        return 0
    if not os.path.isfile(args.config):
        train.error(f"{args.config}: no such config file (see workflows/"
                    "train_config.example.toml)")
    from .headless import train_from_config
    from .settings import ConfigError

    try:
        train_from_config(args.config)
    except ConfigError as error:
        print(f"python -m unhype train: {one_line(str(error))}", file=sys.stderr)
        return 2
    return 0


def one_line(message: str) -> str:
    """A message's lines joined into one: after a colon with a space, otherwise with '; '."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    joined = lines[0] if lines else ""
    for line in lines[1:]:
        joined += (" " if joined.endswith(":") else "; ") + line
    return joined


if __name__ == "__main__":
    sys.exit(main())
