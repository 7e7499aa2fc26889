"""`python -m pipeline explain [overrides...]`: the training plan, with a reason per value."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.core.compose import compose_config
from pipeline.core.facts import load_facts
from pipeline.core.rules import resolve_plan


def main(argv: list[str], prog: str = "explain", command: str = "explain") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compose conf/ with Hydra overrides and print how every training value is chosen "
        "(explicit, from the hardware profile, or derived by the guide's rules), without training. "
        "Exits 2 with the validation message when the config is invalid or breaks a sensor rule.",
        epilog="example: python -m pipeline explain sensor=thermal 'classes.names=[a,b,c,d,e]'",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=yolo11s train.hsv_h=0.0")
    parser.add_argument(
        "--analysis",
        type=Path,
        help="recommendations.json written by `analyze`, to let dataset size and object sizes count "
        "(train always uses it; without it the plan uses class count, sensor and hardware only)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    cfg = compose_config(args.overrides)
    plan = resolve_plan(cfg, load_facts(args.analysis) if args.analysis else None)
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2, default=str))
    else:
        choices = f"sensor={cfg.sensor.name} model={cfg.model.name} hardware={cfg.hardware.name}"
        print(f"Training plan for {choices}, {len(cfg.classes.names)} classes\n")
        print(plan.table())
    return 0
