"""Command line: `python -m unhype demo` and `python -m unhype train CONFIG`."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unhype", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="erase a concept in the bundled proving-ground world")
    demo.add_argument("--concept", default="red", help="colour to erase (default: red)")
    demo.add_argument("--out", default="unhype-demo", help="output folder (default: unhype-demo)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: preset)")
    demo.add_argument("--samples", type=int, default=None, help="images per prompt set")
    demo.add_argument("--seed", type=int, default=0)

    train = commands.add_parser("train", help="train a network on a ComfyUI model, headless")
    train.add_argument("config", help="TOML or JSON file (see README, Headless training)")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(concept=args.concept, out=args.out, steps=args.steps, samples=args.samples,
                 seed=args.seed)
        return 0
    from .headless import ConfigError, train_from_config

    try:
        train_from_config(args.config)
    except ConfigError as error:
        print(f"python -m unhype train: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
