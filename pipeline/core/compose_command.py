"""`python -m pipeline compose [overrides...]`: write params.yaml from conf/."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.artifacts import PARAMS_FILE
from pipeline.core.compose import write_params


def main(argv: list[str], prog: str = "compose", command: str = "compose") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compose conf/ with Hydra overrides (e.g. sensor=rgb model=yolo11s) into "
        "params.yaml, validating it first. `dvc repro` then runs the pipeline on it.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=yolo11s train.imgsz=320")
    parser.add_argument("--output", type=Path, default=Path(PARAMS_FILE), help="default: params.yaml")
    args = parser.parse_args(argv)
    path = write_params(args.output, args.overrides)
    print(f"wrote {path} from conf/ {' '.join(args.overrides)}".rstrip())
    return 0
