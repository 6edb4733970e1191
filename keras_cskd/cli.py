"""The `cskd` command.

Each subcommand lives beside the code it drives and adds itself with a
`register_command(subparsers)` function that sets `func` (args -> exit code).

Example:
    cskd analyze before.keras after.keras --images photos/ --out report/
"""

import argparse
import os
import sys

# Quiet TensorFlow's C++ start-up logs unless the user asked for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser():
    from keras_cskd import analysis

    parser = argparse.ArgumentParser(
        prog="cskd",
        description="Train image-aesthetics models the CSKD way (arXiv 2307.15640).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    analysis.register_command(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
