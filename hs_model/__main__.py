"""``python -m hs_model``: predict, explain, evaluate, convert-eval, train, report, finetune, bench.

The one place where the three command-line halves meet: inference (`hs_model.cli`), training and evaluation
(`hs_train.cli`) and the fine-tune use case (`services.cli`). Only this entry point imports all three; the
packages themselves keep their layers (the import rules are tested).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hs_model import cli as inference_cli
from hs_train import cli as training_cli
from services import cli as services_cli


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="python -m hs_model", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    inference_cli.add_commands(sub)
    training_cli.add_commands(sub)
    services_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from hs_model.checkpoint import CheckpointError
    from hs_model.errors import InputError

    try:
        status: int = args.func(args)
        return status
    except (inference_cli.UserError, InputError, CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
