"""`python -m pipeline <command>`: one entry point for every stage and tool.

Only the chosen command's module is imported, so `--help` answers at once.
"""

from __future__ import annotations

import importlib
import sys

from pipeline.core.cli import run_guarded

COMMANDS = {
    "compose": ("pipeline.core.compose_command", "compose conf/ (+ Hydra overrides) into params.yaml"),
    "explain": ("pipeline.train.explain", "print the resolved training plan with a reason per value"),
    "prepare": ("pipeline.data.prepare", "stage 1: read, validate and split a dataset into YOLO layout"),
    "analyze": ("pipeline.data.analyze", "stage 2: dataset statistics, plots and recommendations"),
    "train": ("pipeline.train.stage", "stage 3: train from scratch with Ultralytics, tracked in MLflow"),
    "evaluate": ("pipeline.evaluate.stage", "stage 4: test-split metrics, per-class AP, thresholds"),
    "export": ("pipeline.deploy.export", "stage 5: ONNX/TorchScript/OpenVINO export with parity checks"),
    "benchmark": ("pipeline.deploy.benchmark", "stage 6: latency, throughput and accuracy per format"),
    "launch": ("pipeline.train.launch", "print (or run) the torchrun command for multi-node training"),
    "deploy": ("pipeline.deploy.device", "on the target device: build and check a TensorRT engine"),
    "select": ("pipeline.ops.select", "pick unlabelled frames to label next, with pre-annotations"),
    "scaling": ("pipeline.ops.scaling", "train on nested subsets; forecast images needed for a target mAP"),
    "retrain": ("pipeline.ops.retrain", "scheduled retraining with champion/challenger promotion"),
    "audit": ("pipeline.ops.audit_folds", "likely label errors (train: --folds K), a review page for fixes"),
    "rollback": ("pipeline.ops.retrain", "point the registry's champion alias back to the previous one"),
}


def usage() -> str:
    lines = ["usage: python -m pipeline <command> [options]   (<command> --help for its options)", ""]
    lines.append("commands:")
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += [
        "",
        "The six stages run in order with `dvc repro`; each reads params.yaml (composed from conf/).",
        "Example: python -m pipeline explain sensor=thermal model=yolo11s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])

    return run_guarded(lambda: module.main(rest, prog=f"python -m pipeline {command}", command=command))


if __name__ == "__main__":
    sys.exit(main())
