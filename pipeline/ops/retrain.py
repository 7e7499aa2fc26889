"""Scheduled retraining: a challenger replaces the registry's champion only when it is better.

`python -m pipeline retrain` is what a cron line, a systemd timer or a CI schedule runs
(deploy/schedule/). Holding a file lock, so overlapping schedules never run two at once, it

1. reruns prepare (`dvc repro prepare`) and reads the current data's `dataset_hash` from its
   manifest.json; when that is the hash the champion was trained on (the run tag
   `pipeline.dataset_hash` the train stage wrote), there is nothing to do (unless --force);
2. reproduces the pipeline (`dvc repro`: only the stages whose inputs changed); the evaluate stage
   registers the new model, which gets the alias `challenger`;
3. evaluates the champion and the challenger, both downloaded from the registry, on the current
   evaluation split with the evaluate stage's own code (pipeline/ops/contenders.py); with
   `--seeds N` the challenger's recipe is trained with N-1 more seeds, and those are scored too;
4. moves the alias `champion` to the challenger only if it beats the champion on `retrain.metric`
   by `retrain.min_improvement` and no class's AP50-95 falls by more than `retrain.max_class_drop`
   (the first model ever trained becomes champion);
5. writes a decision record ({retrain.records}/, JSON and Markdown) and logs it to MLflow
   (experiment `retrain.experiment`).

`python -m pipeline rollback` points `champion` back to the previous champion.

Crash safety: an alias move is one registry call that replaces the alias's old target, and the
champion alias is never deleted, so a kill at any moment leaves the champion either the old or the
new model. The champion history (registered-model tag `champion_history`, versions in the order
they became champion) is bookkeeping written after each move and repaired from the alias at the
start of every command: a champion missing from it was promoted, one below its top was rolled
back to. Versions rolled back from are tagged `retrain.rolled_back` and never promoted again.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from dataclasses import asdict
from pathlib import Path

from pipeline.core import tracking
from pipeline.core.artifacts import Artifacts
from pipeline.core.cli import stage_parser
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.errors import PipelineError
from pipeline.core.io import write_json, write_text
from pipeline.core.prepared import read_dataset_hash
from pipeline.ops.children import run_bound
from pipeline.ops.contenders import paired_interval, recorded_score, replica_seeds, score, seed_replica
from pipeline.ops.decision import (
    CHALLENGER,
    CHAMPION,
    Decision,
    decide,
    now,
    render_markdown,
    rule_text,
)
from pipeline.ops.lock import RetrainBusy, hold_lock
from pipeline.ops.registry import (
    OUTCOME_TAG,
    UNDECIDED,
    Registry,
    RetrainError,
    is_rolled_back,
    open_registry,
)

EXIT_NOTHING_TO_DO = 0
EXIT_FAILED = 1
EXIT_PROMOTED = 10
EXIT_KEPT = 11
EXIT_BUSY = 12
EXIT_CODES = {
    "nothing_to_do": EXIT_NOTHING_TO_DO,
    "rolled_back": EXIT_NOTHING_TO_DO,
    "promoted": EXIT_PROMOTED,
    "kept": EXIT_KEPT,
    "failed": EXIT_FAILED,
}
EXIT_HELP = f"""exit status:
  {EXIT_NOTHING_TO_DO:<3} nothing to do (the data is what the champion was trained on); rollback done
  {EXIT_FAILED:<3} failed (a stage, the evaluation or the registry failed; see the decision record)
  2   configuration error (params.yaml), or rollback without a previous champion
  {EXIT_PROMOTED:<3} promoted: the challenger is the new champion (also the first model ever)
  {EXIT_KEPT:<3} kept: the challenger did not win; the champion is unchanged
  {EXIT_BUSY:<3} busy: another retrain or rollback holds the lock (retrain.lock_wait, --wait)"""


# ---- DVC ------------------------------------------------------------------------------


def dvc(*args: str) -> None:
    """DVC from this environment; its stage commands (`python -m pipeline ...`) find the same python,
    also under cron or systemd, whose PATH does not hold the virtual environment."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    print(f"$ dvc {' '.join(args)}", flush=True)
    code = run_bound([sys.executable, "-m", "dvc", *args], env)
    if code:
        raise RetrainError(f"`dvc {' '.join(args)}` exited with {code}; its output is above")


def refresh_data(cfg: PipelineConfig) -> str:
    """Run prepare (forced when the data may live outside DVC's view) and return the data's hash."""
    dvc("repro", *(["--force", "--single-item"] if cfg.retrain.refresh_data else []), "prepare")
    return read_dataset_hash(Artifacts.of(cfg).dataset)


# ---- the commands ---------------------------------------------------------------------------------


def retrain(cfg: PipelineConfig, force: bool, started: str, seeds: int = 1) -> Decision:
    registry = open_registry(cfg)
    history = registry.reconcile()
    undecided = registry.mark_undecided()
    if undecided:
        print(
            f"version(s) {', '.join(undecided)} have no decision record (a killed retrain?): "
            f"tagged {OUTCOME_TAG}={UNDECIDED}"
        )
    data_hash = refresh_data(cfg)
    champion = registry.version(CHAMPION)
    trained_on = registry.dataset_hash(champion) if champion else None
    if champion and trained_on == data_hash and not force:
        reason = f"the data ({data_hash[:12]}) is what champion version {champion.version} was trained on"
        return nothing_to_do(cfg, started, reason, champion, data_hash)
    dvc("repro", *cfg.retrain.targets)
    challenger = registry.version_of_run(tracking.read_run_id(cfg))
    if champion and (str(challenger.version) in history or is_rolled_back(challenger)):
        reason = (
            f"the pipeline's model is version {challenger.version}, which was champion before or was "
            "rolled back: retrain waits for new data or changed params"
        )
        return nothing_to_do(cfg, started, reason, champion, data_hash)
    registry.move(CHALLENGER, str(challenger.version))
    return compare(cfg, registry, champion, challenger, started, data_hash, seeds)


def compare(
    cfg: PipelineConfig, registry: Registry, champion, challenger, started: str, data_hash: str, seeds: int
):
    with tempfile.TemporaryDirectory(prefix="retrain-") as scratch:
        theirs, their_counts = score(cfg, registry, champion, Path(scratch)) if champion else (None, None)
        ours, our_counts = score(cfg, registry, challenger, Path(scratch))
        extra = replica_seeds(cfg, seeds) if champion else []  # the first model is promoted anyway
        replicas = {}
        for k, seed in enumerate(extra, 1):
            print(f"--seeds {seeds}: training the challenger's recipe with seed {seed} ({k}/{len(extra)})")
            replicas[f"{CHALLENGER}-seed{seed}"] = seed_replica(
                cfg, seed, challenger, data_hash, Path(scratch)
            )
    counts = [our_counts, *(c for _, c in replicas.values())]
    interval = paired_interval(their_counts, counts, cfg) if their_counts is not None else None
    extra_scores = {role: s for role, (s, _) in replicas.items()}
    verdict = decide(
        theirs, ours, cfg.retrain, interval, cfg.evaluate.slice_min_instances, list(extra_scores.values())
    )
    if verdict.promote:
        registry.promote(ours.version)
    scores = ({CHAMPION: theirs} if theirs else {}) | {CHALLENGER: ours} | extra_scores
    return Decision(
        "retrain",
        "promoted" if verdict.promote else "kept",
        verdict.reason,
        registry.name,
        rule_text(cfg.retrain),
        started,
        champion_before=theirs.version if theirs else None,
        champion_after=ours.version if verdict.promote else theirs.version,
        scores=scores,
        verdict=verdict,
        dataset_hash=data_hash,
        split=ours.measured,
    )


def nothing_to_do(cfg: PipelineConfig, started: str, reason: str, champion, data_hash: str) -> Decision:
    version = str(champion.version)
    return Decision(
        "retrain",
        "nothing_to_do",
        reason,
        cfg.track.register_model,
        rule_text(cfg.retrain),
        started,
        champion_before=version,
        champion_after=version,
        dataset_hash=data_hash,
    )


def rollback(cfg: PipelineConfig, started: str) -> Decision:
    """Point `champion` at the version before it in the history."""
    registry = open_registry(cfg)
    history = registry.reconcile()
    if len(history) < 2:
        raise PipelineError(
            f"registered model '{registry.name}' has no previous champion to roll back to "
            f"(champion history: {history or 'empty'}); nothing was changed"
        )
    current, previous = history[-1], history[-2]
    registry.move(CHAMPION, previous)
    registry.reconcile()  # drops `current` from the history and tags it rolled back
    versions = {v: registry.client.get_model_version(registry.name, v) for v in (current, previous)}
    scores = {"rolled_back": recorded_score(registry, versions[current])}
    scores["restored"] = recorded_score(registry, versions[previous])
    reason = f"champion moved back from version {current} to version {previous}, the previous champion"
    rule = "rollback: the champion before the current one in the champion history"
    return Decision(
        "rollback", "rolled_back", reason, registry.name, rule, started,
        champion_before=current, champion_after=previous, scores=scores,
    )  # fmt: skip


def failed(cfg: PipelineConfig, command: str, started: str, error: BaseException) -> Decision:
    reason = f"{type(error).__name__}: {error}"
    return Decision(command, "failed", reason, cfg.track.register_model, rule_text(cfg.retrain), started)


def write_record(cfg: PipelineConfig, d: Decision) -> tuple[Path, Path]:
    """{records}/<time>-<command>-<outcome>.json and .md, plus latest.json and latest.md."""
    folder = Path(cfg.retrain.records)
    stem = f"{d.started.replace(':', '').replace('+0000', 'Z')}-{d.command}-{d.outcome}"
    payload, markdown = asdict(d), render_markdown(d)
    for name in (stem, "latest"):
        write_json(folder / f"{name}.json", payload)
        write_text(folder / f"{name}.md", markdown)
    return folder / f"{stem}.json", folder / f"{stem}.md"


def log_record(cfg: PipelineConfig, d: Decision, files: tuple[Path, Path]) -> str:
    """One MLflow run per decision in `retrain.experiment`; the challenger's version is tagged too."""
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    mlflow.set_experiment(cfg.retrain.experiment)
    with mlflow.start_run(run_name=f"{d.command}-{d.outcome}") as run:
        mlflow.set_tags(record_tags(d))
        for role, s in d.scores.items():
            tracking.log_metrics(s.metrics, prefix=f"{role}/")
            tracking.log_metrics(s.per_class, prefix=f"{role}/AP50-95/")
        if d.verdict and d.verdict.metric_delta is not None:
            tracking.log_metrics({cfg.retrain.metric: d.verdict.metric_delta}, prefix="delta/")
            tracking.log_metrics(d.verdict.class_deltas, prefix="delta/AP50-95/")
        if d.verdict and d.verdict.interval:
            i = d.verdict.interval
            tracking.log_metrics({"delta": i.delta, "low": i.low, "high": i.high}, prefix="F1_interval/")
        for path in files:
            mlflow.log_artifact(str(path))
    if CHALLENGER in d.scores:
        tag_challenger(cfg, d, run.info.run_id)
    return run.info.run_id


def record_tags(d: Decision) -> dict[str, str]:
    tags = {"retrain.command": d.command, "retrain.outcome": d.outcome, "retrain.model": d.model}
    tags |= {"retrain.reason": d.reason[:5000], "retrain.rule": d.rule}
    tags |= {
        "retrain.champion_before": d.champion_before or "",
        "retrain.champion_after": d.champion_after or "",
    }
    return {**tags, "retrain.dataset_hash": d.dataset_hash or ""}


def tag_challenger(cfg: PipelineConfig, d: Decision, run_id: str) -> None:
    registry = open_registry(cfg)
    version = d.scores[CHALLENGER].version
    for key, value in {OUTCOME_TAG: d.outcome, "retrain.decision_run": run_id}.items():
        registry.client.set_model_version_tag(registry.name, version, key, value)


# ---- command line ---------------------------------------------------------------------------------


def wait_seconds(text: str) -> float | None:
    if text == "forever":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds (e.g. 600) or 'forever'") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be >= 0")
    return seconds


def seed_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of trainings, 1 or more (e.g. 3)")
    return int(text)


def build_parser(prog: str, command: str) -> argparse.ArgumentParser:
    description = {
        "retrain": "Retrain when the data changed; promote the challenger only if it beats the champion.",
        "rollback": "Point the registry's champion alias back to the previous champion.",
    }[command]
    parser = stage_parser(prog, description)
    parser.epilog = EXIT_HELP + "\n\nDecision records: {retrain.records}/latest.md (and .json), and MLflow."
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if command == "retrain":
        parser.add_argument(
            "--force",
            action="store_true",
            help="go on even when the data is what the champion was trained on (e.g. after changing "
            "params); DVC still reruns only the stages whose inputs changed",
        )
        parser.add_argument(
            "--seeds",
            type=seed_count,
            default=1,
            metavar="N",
            help="train the challenger's recipe N times (the pipeline's seed, then seed+1 ...; N-1 extra "
            "trainings in runs/retrain-seed<s>/, each an MLflow child run) and promote only when the mean "
            "over the seeds wins and the interval over images and seeds clears the margin; for when one "
            "training's luck could decide (default: 1)",
        )
    waiting = parser.add_mutually_exclusive_group()
    waiting.add_argument(
        "--wait",
        type=wait_seconds,
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help="wait this long for a running retrain or rollback to finish ('forever' waits without limit; "
        "default: retrain.lock_wait)",
    )
    waiting.add_argument(
        "--no-wait", dest="wait", action="store_const", const=0.0, default=argparse.SUPPRESS, help="--wait 0"
    )
    return parser


def attempt(cfg: PipelineConfig, command: str, force: bool, seeds: int = 1) -> Decision:
    started = now()
    if command == "rollback":
        return rollback(cfg, started)  # its errors change nothing: exit 2 with the message
    try:
        return retrain(cfg, force, started, seeds)
    except Exception as exc:  # a scheduled job's failure must reach the decision log, not only stderr
        traceback.print_exc()
        return failed(cfg, command, started, exc)


def main(argv: list[str], prog: str = "retrain", command: str = "retrain") -> int:
    args = build_parser(prog, command).parse_args(argv)
    cfg = load_params(args.params)
    wait = getattr(args, "wait", cfg.retrain.lock_wait)
    try:
        with hold_lock(Path(cfg.retrain.lock_file), wait):
            decision = attempt(cfg, command, getattr(args, "force", False), getattr(args, "seeds", 1))
    except RetrainBusy as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    print(f"{decision.outcome.replace('_', ' ')}: {decision.reason}")
    if decision.outcome != "nothing_to_do":
        files = write_record(cfg, decision)
        run_id = log_record(cfg, decision, files)
        print(f"decision record {files[1]} (MLflow run {run_id} in '{cfg.retrain.experiment}')")
    if decision.champion_after:
        print(f"champion: version {decision.champion_after} of '{decision.model}'")
    return EXIT_CODES[decision.outcome]
