"""Is the derived plan better than Ultralytics' defaults and the guide's own template, at equal budget?

For each dataset, trains YOLO from scratch under each configuration, once per seed, at the same
epochs, image size and batch, and scores the best checkpoint on the test split (val when there is
none; the split is printed):

- `defaults`: Ultralytics' own defaults for every value the plan derives (`optimizer=auto` too);
- `template`: the guide's template for the dataset's sensor (section 12.1 thermal, 12.2 RGB) as a user
  writes it by hand: its values, and Ultralytics' defaults for everything it leaves out;
- `auto`: the project's derived plan, nothing overridden;
- `adamw_lr`: the auto plan at the learning rate Ultralytics' `optimizer=auto` gives AdamW on a short
  run, 0.002 * 5 / (4 + classes), instead of the plan's SGD-scale lr0 (both train with AdamW);
- `distill`: the auto plan trained against a teacher (`train.distill.teacher`, guide 10.2): a larger
  model (`--teacher-model`, yolo11s) trained once per dataset with the auto plan for
  `--teacher-epochs` (3x the budget), seed 0; the teacher's own score is printed beside;
- `no_<group>`: the auto plan with one group of rules set back to Ultralytics' defaults
  (small-object augmentation, lr scaling, warmup, patience, close_mosaic, a step every batch, the
  sensor's augmentation);
- each `--variant NAME OVERRIDE...`: the auto plan with those Hydra overrides, to test a rule idea at
  the same budget before changing the rule (`--variant close_mosaic_5 train.close_mosaic=5`).

`--set OVERRIDE...` applies Hydra overrides to every trial of every configuration, for data none of
the rules was chosen on: `--datasets synthetic_thermal --set data.synthetic.seed=1` generates a fresh
synthetic set (its own frames and split; the journal tells it from seed 0's by the prepared data).

Prints mean and standard deviation of mAP50-95 over the seeds, how often early stopping fired, and
for each configuration whether its difference from `auto` is larger than the seed noise (Welch's
t-test on mAP50-95, p < 0.05) and the paired bootstrap interval of its F1 difference from `auto` on
the test images (at the evaluate stage's thresholds; images and both sides' seeds resampled, as
`retrain` decides); writes plans.json and plans.png to --out.

Each finished trial is also appended to --out/trials.jsonl. A rerun with the same --out reuses every
trial whose training would be the same (the prepared data, the seed and every value Ultralytics gets,
so a changed rule retrains `auto` and nothing else): a killed benchmark resumes where it stopped, and
`--seeds 5` after `--seeds 3` trains only seeds 3 and 4. Two processes or machines split the seeds
with `--first-seed`: `--seeds 3` in one, `--first-seed 3 --seeds 2` in the other, then both
journals `cat` into one --out and `--seeds 5` there prints the table of all five, training nothing.

    PYTHONPATH=. .venv/bin/python scripts/benchmark_plans.py [--datasets thermal_dogs_people bccd
        synthetic_thermal] [--configs defaults template auto ...] [--seeds 3] [--first-seed 0] [--epochs 20]
        [--imgsz 128] [--batch 16] [--out reports/plans] [--variant NAME OVERRIDE... ...]
        [--set OVERRIDE...]

The real datasets need ../shared (conf/data points there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from pipeline.core.artifacts import Artifacts
from pipeline.core.compose import compose_config
from pipeline.core.io import write_json
from pipeline.core.prepared import read_dataset_hash
from pipeline.core.rules import resolve_plan
from pipeline.data import analyze, prepare
from pipeline.evaluate import results
from pipeline.evaluate import stage as evaluate_stage
from pipeline.evaluate.compare import paired_bootstrap
from pipeline.train import stage as train_stage

DATASETS = {  # data=, classes=, sensor=
    "thermal_dogs_people": ("thermal_dogs_people", "thermal_dogs_people", "thermal"),
    "bccd": ("bccd", "bccd", "rgb"),
    "synthetic_thermal": ("synthetic_thermal", "synthetic", "thermal"),
}
# Ultralytics 8.4's default.yaml for every value the plan derives.
ULTRALYTICS = {
    "lr0": 0.01,
    "warmup_epochs": 3.0,
    "patience": 100,
    "close_mosaic": 10,
    "nbs": 64,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
    "copy_paste": 0.0,
    "cls_pw": 0.0,
    "cos_lr": False,
}
# Guide 12.1 (thermal wildlife) and 12.2 (RGB vehicles) as a user copies them: every line but the budget
# (epochs, patience, batch, imgsz, model) and the machine (device, workers, amp). Their copy_paste (0.2,
# 0.3) is inert on box labels and auto_augment applies to classification only, so both are left out.
TEMPLATES = {
    "thermal": {"optimizer": "AdamW", "lr0": 0.01, "warmup_epochs": 5, "hsv_h": 0.0, "hsv_s": 0.0}
    | {"hsv_v": 0.3, "degrees": 15.0, "translate": 0.1, "scale": 0.5, "mosaic": 1.0, "mixup": 0.0},
    "rgb": {"optimizer": "AdamW", "lr0": 0.01, "warmup_epochs": 8, "hsv_h": 0.015, "hsv_s": 0.7}
    | {"hsv_v": 0.4, "degrees": 10.0, "translate": 0.15, "scale": 0.6, "mosaic": 1.0, "mixup": 0.1},
}
ABLATIONS = {
    "no_small_objects": ("scale", "mosaic", "copy_paste"),
    "no_lr_scaling": ("lr0",),
    "no_warmup_rule": ("warmup_epochs",),
    "no_patience_rule": ("patience",),
    "no_close_mosaic_rule": ("close_mosaic",),
    "no_step_every_batch": ("nbs",),  # gradients accumulate to 64 images per step again
    # the sensor's augmentation strengths (guide 5.3.2 / 12.2); hue and saturation stay as the sensor has them
    "no_sensor_augmentation": ("hsv_v", "degrees", "translate", "scale", "mosaic", "mixup", "copy_paste"),
}
CONFIGS = ("defaults", "template", "auto", "adamw_lr", "distill", *ABLATIONS)


def ultralytics_adamw_lr(classes: int) -> float:
    """What Ultralytics' optimizer=auto sets for AdamW when a run has under 10,000 iterations."""
    return round(0.002 * 5 / (4 + classes), 6)


def overrides_for(
    config: str, sensor: str, classes: int, named: dict[str, list[str]] | None = None
) -> list[str]:
    """Hydra overrides that turn the auto plan into `config`; `named` holds the configurations that are
    given as overrides (each --variant, and distill with its teacher)."""
    if named and config in named:
        return named[config]
    if config in ("auto", "teacher"):
        return []
    if config == "adamw_lr":
        return [f"train.lr0={ultralytics_adamw_lr(classes)}"]
    if config == "defaults":
        values = ULTRALYTICS | {"optimizer": "auto"}
    elif config == "template":  # by hand: what the template leaves out is Ultralytics' default
        values = ULTRALYTICS | TEMPLATES[sensor]
    else:
        values = {key: ULTRALYTICS[key] for key in ABLATIONS[config]}
    unsafe = sensor == "thermal" and (values.get("hsv_h") or values.get("hsv_s"))
    return [f"train.{k}={v}" for k, v in values.items()] + ["train.allow_unsafe_augmentation=true"] * bool(
        unsafe
    )


@dataclass(frozen=True)
class Trial:
    dataset: str
    config: str
    seed: int
    split: str
    map50_95: float
    epochs_run: int
    early_stop: bool
    seconds: float  # training and scoring
    counts: dict[str, list[int]]  # per test image: TP, FP, FN at the evaluate stage's thresholds


def prepared_base(root: Path, dataset: str, budget: list[str]) -> list[str]:
    """Prepare and analyze the dataset once; the overrides every trial on it shares."""
    data, classes, sensor = DATASETS[dataset]
    base = [
        f"data={data}",
        f"classes={classes}",
        f"sensor={sensor}",
        f"track.tracking_uri=sqlite:///{root}/mlflow.db",
    ]
    base += [f"paths.prepared={root / 'prepared'}", f"paths.analysis={root / 'analysis'}", *budget]
    cfg = compose_config(base)
    prepare.run(cfg)
    analyze.run(cfg)
    return base


def trial_config(
    root: Path, base: list[str], dataset: str, config: str, seed: int, named: dict | None = None
):
    sensor = DATASETS[dataset][2]
    folder = trial_folder(root, config, seed)
    paths = [f"paths.{key}={folder / key}" for key in ("train", "train_report", "evaluation")]
    classes = len(compose_config(base).classes.names)
    return compose_config([*base, *overrides_for(config, sensor, classes, named), f"seed={seed}", *paths])


def trial_key(cfg, dataset: str) -> str:
    """What makes two trials one training: the prepared data, and every value Ultralytics gets (the
    resolved plan, so a rule change retrains `auto` while `defaults` is reused; a distill trial's
    teacher lives in a temporary folder, so it never is)."""
    fixed = {
        k: as_float(v) for k, v in training_arguments(cfg).items() if k not in ("data", "project", "name")
    }
    relevant = fixed | {
        "model": cfg.model.name,
        "dataset": dataset,
        "data": read_dataset_hash(Artifacts.of(cfg).dataset),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def training_arguments(cfg) -> dict:
    """What Ultralytics' train() receives for this trial (data and run folders are placeholders)."""
    plan = resolve_plan(cfg, train_stage.read_facts(cfg))
    return train_stage.train_arguments(cfg, plan, Path("data.yaml"), Path("run"))


def as_float(value):
    """8 and 8.0 epochs of warmup are one training: numbers are compared as floats."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def train_one(cfg, dataset: str, config: str, epochs: int) -> Trial:
    start = time.perf_counter()
    result = train_stage.run(cfg)
    evaluation = evaluate_stage.run(cfg)  # the test split (val when there is none), as the stage scores
    score = float(results.metrics_json(evaluation)["mAP50-95"] or 0.0)
    counts = {name: list(c) for name, *c in evaluation.image_counts}
    ran, seconds = result.epochs_completed, time.perf_counter() - start
    return Trial(dataset, config, cfg.seed, evaluation.split, score, ran, ran < epochs, seconds, counts)


def finished_trials(path: Path) -> dict[str, dict]:
    """Trials an earlier run of this --out finished, by key; a line torn by a kill is skipped."""
    if not path.exists():
        return {}
    done = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            print(f"{path}:{number}: not a whole trial (a kill mid-write?); it is trained again")
            continue
        done[record.pop("key")] = record
    return done


def append_trial(path: Path, key: str, trial: Trial) -> None:
    """One line per finished trial, on disk before the next starts: a kill loses one training."""
    torn = path.exists() and path.stat().st_size > 0 and last_byte(path) != b"\n"
    with path.open("a", encoding="utf-8") as stream:
        stream.write("\n" * bool(torn) + json.dumps({"key": key, **asdict(trial)}) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def last_byte(path: Path) -> bytes:
    with path.open("rb") as stream:
        stream.seek(-1, os.SEEK_END)
        return stream.read(1)


def trial_folder(root: Path, config: str, seed: int) -> Path:
    return root / config / f"seed{seed}"


def train_teacher(root: Path, base: list[str], dataset: str, model: str, epochs: int) -> tuple[Trial, Path]:
    """The distill configuration's teacher: `model` with the auto plan for `epochs` epochs, seed 0;
    its score and its best checkpoint."""
    budget = [o for o in base if not o.startswith("train.epochs=")] + [f"train.epochs={epochs}"]
    cfg = trial_config(root, [*budget, f"model={model}"], dataset, "teacher", 0)
    trial = train_one(cfg, dataset, "teacher", epochs)
    print(
        f"{dataset} teacher {model}, {epochs} epochs: mAP50-95 {trial.map50_95:.4f} ({trial.seconds:.0f} s)"
    )
    return trial, trial_folder(root, "teacher", 0) / "train" / "weights" / "best.pt"


def f1_interval(auto: list[Trial], group: list[Trial]) -> dict | None:
    """The paired bootstrap interval of F1(config) - F1(auto) on the test images, resampling the
    images and each side's seeds (pipeline.evaluate.compare, as retrain decides)."""
    if not auto or group == auto:
        return None
    names = sorted(set.intersection(*(set(t.counts) for t in [*auto, *group])))
    if not names:
        return None
    side = lambda trials: np.array([[t.counts[n] for n in names] for t in trials])  # noqa: E731
    return asdict(paired_bootstrap(side(auto), side(group)))


def grouped(trials: list[Trial]) -> dict[str, dict[str, list[Trial]]]:
    """Trials by dataset, then by configuration, in the order they ran."""
    out: dict[str, dict[str, list[Trial]]] = {}
    for trial in trials:
        out.setdefault(trial.dataset, {}).setdefault(trial.config, []).append(trial)
    return out


def summary(trials: list[Trial]) -> list[dict]:
    """Per dataset and configuration: mean, sd, early stops, Welch's test against auto, and the
    paired F1 interval against auto."""
    rows = []
    for dataset, by_config in grouped(trials).items():
        auto_trials = by_config.get("auto", [])
        auto = [t.map50_95 for t in auto_trials]
        for config, group in by_config.items():
            values = [t.map50_95 for t in group]
            p = (
                stats.ttest_ind(values, auto, equal_var=False).pvalue
                if config != "auto" and len(auto) > 1
                else None
            )
            rows.append(
                {
                    "dataset": dataset,
                    "config": config,
                    "split": group[0].split,
                    "mean": statistics.fmean(values),
                    "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "seeds": len(values),
                    "early_stops": sum(t.early_stop for t in group),
                    "p_vs_auto": None if p is None or p != p else float(p),  # NaN: no variance at all
                    "f1_vs_auto": f1_interval(auto_trials, group),
                }
            )
    return rows


def verdict(row: dict, auto_mean: float) -> str:
    if row["config"] == "auto":
        return "-"
    if row["p_vs_auto"] is None:
        return "no test (one seed, or no spread)"
    side = "above" if row["mean"] > auto_mean else "below" if row["mean"] < auto_mean else "equal to"
    noise = "beyond the seed noise" if row["p_vs_auto"] < 0.05 else "within the seed noise"
    return f"{side} auto, {noise} (p={row['p_vs_auto']:.2f})"


def interval_text(interval: dict | None) -> str:
    if interval is None:
        return "-"
    clears = "excludes 0" if interval["low"] > 0 or interval["high"] < 0 else "contains 0"
    return f"{interval['delta']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}], {clears}"


def print_table(rows: list[dict]) -> None:
    print(
        "| dataset | config | split | mAP50-95 mean +- sd | seeds | early stops | against auto (Welch) "
        "| F1 - auto's, 95 % paired bootstrap (images and seeds) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        auto = [r["mean"] for r in rows if r["dataset"] == row["dataset"] and r["config"] == "auto"]
        welch = verdict(row, auto[0]) if auto else "no auto run"
        print(
            f"| {row['dataset']} | {row['config']} | {row['split']} | {row['mean']:.4f} +- {row['sd']:.4f} "
            f"| {row['seeds']} | {row['early_stops']} | {welch} | {interval_text(row['f1_vs_auto'])} |"
        )


GOAL_RATIO = 1.2  # the goal: auto at least the template and at least 1.2x the defaults


def goals(trials: list[Trial]) -> dict[str, dict]:
    """goal() for each dataset with auto, defaults and template trials."""
    score = lambda group: [t.map50_95 for t in group]  # noqa: E731
    return {
        dataset: goal(score(by_config["auto"]), score(by_config["defaults"]), score(by_config["template"]))
        for dataset, by_config in grouped(trials).items()
        if {"auto", "defaults", "template"} <= set(by_config)
    }


def goal(auto: list[float], defaults: list[float], template: list[float]) -> dict:
    """The goal's two margins, and one-sided Welch tests that auto's mean is above GOAL_RATIO x the
    defaults' (their scores scaled, so their spread is too) and above the template's."""
    return {
        "auto_over_defaults": ratio(statistics.fmean(auto), statistics.fmean(defaults)),
        "p_above_goal_ratio": p_above(auto, [GOAL_RATIO * d for d in defaults]),
        "auto_minus_template": statistics.fmean(auto) - statistics.fmean(template),
        "p_above_template": p_above(auto, template),
    }


def ratio(value: float, base: float) -> float:
    """value / base; a short budget can leave every defaults trial at 0 mAP."""
    return value / base if base > 0 else float("inf")


def p_above(values: list[float], others: list[float]) -> float:
    return float(stats.ttest_ind(values, others, equal_var=False, alternative="greater").pvalue)


def print_goals(by_dataset: dict[str, dict]) -> None:
    for dataset, goal in by_dataset.items():
        print(
            f"{dataset}: auto/defaults {goal['auto_over_defaults']:.2f}x (goal >= {GOAL_RATIO}; above it: "
            f"p={goal['p_above_goal_ratio']:.2f}), auto - template {goal['auto_minus_template']:+.4f} "
            f"(goal >= 0; above it: p={goal['p_above_template']:.2f}), one-sided Welch"
        )


def draw(rows: list[dict], trials: list[Trial], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    figure, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        mine = [r for r in rows if r["dataset"] == dataset]
        names = [r["config"] for r in mine]
        axis.bar(names, [r["mean"] for r in mine], yerr=[r["sd"] for r in mine], color="#9ecae1", capsize=3)
        for i, name in enumerate(names):
            points = [t.map50_95 for t in trials if t.dataset == dataset and t.config == name]
            axis.plot([i] * len(points), points, "k.", ms=4)
        axis.set(title=dataset, ylabel=f"mAP50-95 ({mine[0]['split']})")
        axis.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_variants(parser: argparse.ArgumentParser, given: list[list[str]]) -> dict[str, list[str]]:
    """--variant NAME OVERRIDE...: a name no built-in configuration has, and at least one override."""
    variants = {}
    for name, *overrides in given:
        if name in CONFIGS or name in variants or "=" in name:
            parser.error(f"--variant {name}: the name must be new (not {', '.join(CONFIGS)}) and hold no '='")
        bad = [o for o in overrides if "=" not in o]
        if not overrides or bad:
            parser.error(
                f"--variant {name}: give one or more Hydra overrides KEY=VALUE after the name"
                + (f" ({bad[0]!r} is not one)" if bad else "")
                + ", e.g. --variant close_mosaic_5 train.close_mosaic=5"
            )
        variants[name] = overrides
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--seeds", type=int, default=3, help="trainings per configuration (seed 0..N-1)")
    parser.add_argument("--first-seed", type=int, default=0, help="start at this seed (K..K+N-1)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("reports/plans"))
    parser.add_argument(
        "--teacher-model", default="yolo11s", help="the distill config's teacher (conf/model)"
    )
    parser.add_argument("--teacher-epochs", type=int, help="the teacher's epochs (default: 3x --epochs)")
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "OVERRIDE"),
        help="one more configuration: the auto plan with these Hydra overrides, e.g. "
        "--variant close_mosaic_5 train.close_mosaic=5 (repeatable; a rule idea tested at equal budget)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="OVERRIDE",
        help="Hydra overrides for every trial, e.g. data.synthetic.seed=1 (a fresh synthetic set)",
    )
    args = parser.parse_args()
    variants = parse_variants(parser, args.variant)
    configs = [*args.configs, *variants]
    budget = [f"train.epochs={args.epochs}", f"train.imgsz={args.imgsz}", f"train.batch={args.batch}"]
    budget += args.set
    trials: list[Trial] = []
    teachers: list[Trial] = []
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / "trials.jsonl"
    done = finished_trials(journal)
    for dataset in args.datasets:
        with tempfile.TemporaryDirectory(prefix=f"plans-{dataset}-") as tmp:
            base = prepared_base(Path(tmp), dataset, budget)
            named = dict(variants)
            if "distill" in configs:
                epochs = args.teacher_epochs or 3 * args.epochs
                trial, teacher = train_teacher(Path(tmp), base, dataset, args.teacher_model, epochs)
                teachers.append(trial)
                named["distill"] = [f"train.distill.teacher={teacher}"]
            for config in configs:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    cfg = trial_config(Path(tmp), base, dataset, config, seed, named)
                    key = trial_key(cfg, dataset)
                    if key in done:
                        # the same training may have run under another name (an ablation that is auto)
                        trial, how = Trial(**done[key] | {"config": config}), f"from {journal}"
                    else:
                        trial = train_one(cfg, dataset, config, args.epochs)
                        append_trial(journal, key, trial)
                        how = f"{trial.seconds:.0f} s"
                    trials.append(trial)
                    print(f"{dataset} {config} seed {seed}: mAP50-95 {trial.map50_95:.4f} ({how})")
    rows, goal_rows = summary(trials), goals(trials)
    write_json(
        args.out / "plans.json",
        {
            "budget": budget,
            "rows": rows,
            "goals": goal_rows,
            "trials": [asdict(t) for t in trials],
            "teachers": [asdict(t) | {"model": args.teacher_model} for t in teachers],
        },
    )
    draw(rows, trials, args.out / "plans.png")
    print_table(rows)
    print_goals(goal_rows)
    print(f"written: {args.out / 'plans.json'}, {args.out / 'plans.png'}")


if __name__ == "__main__":
    main()
