"""Shared command-line plumbing: argument parsers and the error boundary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.core.artifacts import PARAMS_FILE
from pipeline.core.errors import PipelineError

EXIT_USER_ERROR = 2


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--params",
        type=Path,
        default=Path(PARAMS_FILE),
        help="composed parameters to read (default: params.yaml)",
    )
    return parser


def run_guarded(action: Callable[[], int | None]) -> int:
    """Run a command; a PipelineError becomes one clear line on stderr and exit code 2."""
    try:
        return action() or 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
