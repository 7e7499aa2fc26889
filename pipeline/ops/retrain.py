"""Scheduled retraining: a challenger replaces the registry's champion only when it is better.

`python -m pipeline retrain` is what a cron line, a systemd timer or a CI schedule runs
(deploy/schedule/). Holding a file lock, so overlapping schedules never run two at once, it

1. reruns prepare (`dvc repro prepare`) and reads the current data's `dataset_hash` from its
   manifest.json; when that is the hash the champion was trained on (the run tag
   `pipeline.dataset_hash` the train stage wrote), there is nothing to do (unless --force);
2. reproduces the pipeline (`dvc repro`: only the stages whose inputs changed); the evaluate stage
   registers the new model, which gets the alias `challenger`;
3. evaluates the champion and the challenger, both downloaded from the registry, on the current
   evaluation split with the evaluate stage's own code;
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
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from pipeline.core import tracking
from pipeline.core.cli import stage_parser
from pipeline.core.config import RETRAIN_METRICS, PipelineConfig, RetrainConfig, load_params
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_json, write_json, write_text

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"
ROLLED_BACK_TAG = "retrain.rolled_back"
DATASET_TAG = "pipeline.dataset_hash"
HISTORY_KEEP = 200  # champions remembered (a registered-model tag value is bounded)

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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RetrainBusy(PipelineError):
    """Another retrain or rollback holds the lock."""


class RetrainError(PipelineError):
    """A step of the retrain failed (DVC, the registry)."""


@dataclass(frozen=True)
class ModelScore:
    """A registered model version and its metrics."""

    version: str
    run_id: str
    dataset_hash: str | None  # of the data it was trained on
    metrics: dict[str, float]  # RETRAIN_METRICS
    per_class: dict[str, float]  # AP50-95 of each class with instances in the split
    measured: str  # where the metrics come from


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    metric_delta: float | None  # challenger - champion on the rule's metric
    class_deltas: dict[str, float] = field(default_factory=dict)
    regressions: dict[str, float] = field(default_factory=dict)  # classes falling beyond the bound


@dataclass(frozen=True)
class Decision:
    command: str  # retrain | rollback
    outcome: str  # promoted | kept | nothing_to_do | failed | rolled_back
    reason: str
    model: str  # the registered model's name
    rule: str
    started: str
    finished: str = field(default_factory=now)
    champion_before: str | None = None
    champion_after: str | None = None
    # by role: champion and challenger (retrain), rolled_back and restored (rollback)
    scores: dict[str, ModelScore] = field(default_factory=dict)
    verdict: Verdict | None = None
    dataset_hash: str | None = None  # of the current data
    split: str | None = None  # what the models were evaluated on


# ---- the rule (pure) ------------------------------------------------------------------------------


def rule_text(rule: RetrainConfig) -> str:
    return (
        f"promote when challenger {rule.metric} - champion {rule.metric} >= {rule.min_improvement} "
        f"and no class's AP50-95 falls by more than {rule.max_class_drop}; the first model is promoted"
    )


def class_deltas(champion: ModelScore, challenger: ModelScore) -> dict[str, float]:
    names = sorted(set(champion.per_class) | set(challenger.per_class))
    return {n: round(challenger.per_class.get(n, 0.0) - champion.per_class.get(n, 0.0), 5) for n in names}


def decide(champion: ModelScore | None, challenger: ModelScore, rule: RetrainConfig) -> Verdict:
    """Promote or keep, with the reason in words."""
    if champion is None:
        return Verdict(True, "no champion yet: the first model becomes champion", None)
    ours, theirs = challenger.metrics[rule.metric], champion.metrics[rule.metric]
    delta = round(ours - theirs, 5)
    deltas = class_deltas(champion, challenger)
    regressions = {name: d for name, d in deltas.items() if d < -rule.max_class_drop}
    compared = f"{rule.metric} {ours:.4f} against the champion's {theirs:.4f} ({delta:+.4f})"
    if regressions:
        fallen = ", ".join(f"{name} {d:+.4f}" for name, d in regressions.items())
        reason = f"{compared}, but AP50-95 falls by more than {rule.max_class_drop} for: {fallen}"
        return Verdict(False, reason, delta, deltas, regressions)
    if delta < rule.min_improvement:
        reason = f"{compared}: below the margin {rule.min_improvement}"
        return Verdict(False, reason, delta, deltas)
    reason = f"{compared} reaches the margin {rule.min_improvement}, no class falls beyond the bound"
    return Verdict(True, reason, delta, deltas)


def reconciled(history: list[str], champion: str | None) -> tuple[list[str], list[str]]:
    """(history, versions rolled back from) consistent with the champion alias.

    A champion missing from the history was promoted by a command that stopped before writing it;
    one below the top was rolled back to (by `rollback` or by hand), dropping the versions above it.
    """
    if champion is None or (history and history[-1] == champion):
        return history, []
    if champion in history:
        keep = len(history) - history[::-1].index(champion)
        return history[:keep], history[keep:]
    return [*history, champion][-HISTORY_KEEP:], []


# ---- the registry ---------------------------------------------------------------------------------


class Registry:
    """One registered model's aliases, champion history and version tags."""

    def __init__(self, tracking_uri: str, name: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.name = name

    def aliases(self) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {alias: str(version) for alias, version in model.aliases.items()}

    def version(self, alias: str):
        number = self.aliases().get(alias)
        return None if number is None else self.client.get_model_version(self.name, number)

    def history(self) -> list[str]:
        tags = self.client.get_registered_model(self.name).tags
        return [v for v in tags.get(HISTORY_TAG, "").split(",") if v]

    def reconcile(self) -> list[str]:
        """Repair the history after an interrupted command; returns it."""
        aliases = self.aliases()
        if not aliases and not self.exists():
            return []
        recorded = self.history()
        history, rolled_back = reconciled(recorded, aliases.get(CHAMPION))
        for version in rolled_back:
            self.client.set_model_version_tag(self.name, version, ROLLED_BACK_TAG, now())
        if history != recorded:
            self.client.set_registered_model_tag(self.name, HISTORY_TAG, ",".join(history))
        return history

    def exists(self) -> bool:
        return bool(self.client.search_registered_models(filter_string=f"name = '{self.name}'"))

    def move(self, alias: str, version: str) -> None:
        """One call: the alias leaves its old version as it reaches the new one."""
        self.client.set_registered_model_alias(self.name, alias, version)

    def promote(self, version: str) -> list[str]:
        self.move(CHAMPION, version)
        return self.reconcile()

    def version_of_run(self, run_id: str):
        found = self.client.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
        if not found:
            raise RetrainError(
                f"no version of registered model '{self.name}' comes from run {run_id} "
                "(reports/train/run.json): the evaluate stage registers it; check that it ran "
                "(retrain.targets must include evaluate) and logged to the same MLflow tracking URI"
            )
        return max(found, key=lambda v: int(v.version))

    def dataset_hash(self, version) -> str | None:
        return self.client.get_run(version.run_id).data.tags.get(DATASET_TAG) if version.run_id else None

    def download(self, version, target: Path) -> Path:
        """The version's weights as `target/best.pt` (what the evaluate stage expects)."""
        import mlflow.artifacts

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(target)))
        if local.is_dir():
            found = sorted(local.rglob("best.pt")) or sorted(local.rglob("*.pt"))
            if not found:
                raise RetrainError(f"version {version.version} ({version.source}) holds no .pt weights")
            local = found[0]
        if local != target / "best.pt":
            local.replace(target / "best.pt")
        return target / "best.pt"


def open_registry(cfg: PipelineConfig) -> Registry:
    return Registry(tracking.tracking_uri(cfg), cfg.track.register_model)


def is_rolled_back(version) -> bool:
    return ROLLED_BACK_TAG in version.tags


# ---- lock, DVC, evaluation -------------------------------------------------------------------------


def owner_file(lock: Path) -> Path:
    return lock.with_name(lock.name + ".owner")


@contextmanager
def hold_lock(lock: Path, wait: float | None) -> Iterator[None]:
    """Exclusive for the whole command; the OS frees it when the holder dies, even by SIGKILL."""
    from filelock import FileLock, Timeout

    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = FileLock(str(lock))
    try:
        handle.acquire(timeout=-1 if wait is None else wait)
    except Timeout:
        raise RetrainBusy(busy_message(lock, wait)) from None
    try:
        write_json(owner_file(lock), {"pid": os.getpid(), "host": socket.gethostname(), "since": now()})
        yield
    finally:
        owner_file(lock).unlink(missing_ok=True)
        handle.release()


def lock_holder(lock: Path) -> dict[str, str]:
    try:
        return read_json(owner_file(lock))
    except FileNotFoundError:  # released (or never described) since the attempt failed
        return {}


def busy_message(lock: Path, wait: float) -> str:
    holder = lock_holder(lock)
    who = f"pid {holder['pid']} on {holder['host']}, since {holder['since']}" if holder else "another process"
    return (
        f"another retrain or rollback ({who}) holds {lock}; gave up after {wait:g} s. This run does "
        "nothing: the next schedule will try again (wait longer with --wait SECONDS or retrain.lock_wait)"
    )


def dvc(*args: str) -> None:
    """DVC from this environment; its stage commands (`python -m pipeline ...`) find the same python,
    also under cron or systemd, whose PATH does not hold the virtual environment."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    print(f"$ dvc {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, check=False)
    if done.returncode:
        raise RetrainError(f"`dvc {' '.join(args)}` exited with {done.returncode}; its output is above")


def refresh_data(cfg: PipelineConfig) -> str:
    """Run prepare (forced when the data may live outside DVC's view) and return the data's hash."""
    from pipeline.train.stage import read_dataset_hash

    dvc("repro", *(["--force", "--single-item"] if cfg.retrain.refresh_data else []), "prepare")
    return read_dataset_hash(cfg)


def score(cfg: PipelineConfig, registry: Registry, version, scratch: Path) -> ModelScore:
    """The version's weights from the registry, scored by the evaluate stage's code on the current split."""
    from pipeline.evaluate import stage as evaluate

    folder = scratch / f"v{version.version}"
    weights = registry.download(version, folder / "weights")
    paths = replace(cfg.paths, train=str(weights.parent.parent), evaluation=str(folder / "evaluation"))
    result = evaluate.run(replace(cfg, paths=paths))
    flat = evaluate.metrics_json(result)
    per_class = {c.name: c.ap50_95 for c in result.classes if c.ap50_95 is not None}
    measured = f"{result.split} split ({result.images} images, {result.instances} objects)"
    metrics = {key: float(flat[key] or 0.0) for key in RETRAIN_METRICS}
    return ModelScore(
        str(version.version), version.run_id, registry.dataset_hash(version), metrics, per_class, measured
    )


def recorded_score(registry: Registry, version) -> ModelScore:
    """The metrics the evaluate stage tagged the version with when it registered it."""
    metrics = {key: float(version.tags[key]) for key in RETRAIN_METRICS if key in version.tags}
    measured = "as registered by the evaluate stage"
    return ModelScore(
        str(version.version), version.run_id, registry.dataset_hash(version), metrics, {}, measured
    )


# ---- the commands ---------------------------------------------------------------------------------


def retrain(cfg: PipelineConfig, force: bool, started: str) -> Decision:
    registry = open_registry(cfg)
    history = registry.reconcile()
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
    return compare(cfg, registry, champion, challenger, started, data_hash)


def compare(cfg: PipelineConfig, registry: Registry, champion, challenger, started: str, data_hash: str):
    with tempfile.TemporaryDirectory(prefix="retrain-") as scratch:
        theirs = score(cfg, registry, champion, Path(scratch)) if champion else None
        ours = score(cfg, registry, challenger, Path(scratch))
    verdict = decide(theirs, ours, cfg.retrain)
    if verdict.promote:
        registry.promote(ours.version)
    scores = {CHAMPION: theirs, CHALLENGER: ours} if theirs else {CHALLENGER: ours}
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


# ---- the record -----------------------------------------------------------------------------------


def render_markdown(d: Decision) -> str:
    lines = [
        f"# {d.command.capitalize()} decision: {d.outcome.replace('_', ' ')}",
        "",
        f"- **Outcome:** {d.outcome.replace('_', ' ')}",
        f"- **Why:** {d.reason}",
        f"- **Registered model:** `{d.model}`; champion before: {version_text(d.champion_before)}, "
        f"after: {version_text(d.champion_after)}",
        f"- **Rule:** {d.rule}",
        f"- **When:** {d.started} to {d.finished}",
    ]
    if d.dataset_hash:
        lines.append(f"- **Data:** dataset_hash `{d.dataset_hash}`")
    if d.split:
        models = "both models" if len(d.scores) == 2 else "the model"
        lines.append(f"- **Evaluated on:** the current {d.split}, {models} with the evaluate stage's code")
    return "\n".join(lines + metric_table(d) + class_table(d)) + "\n"


def version_text(version: str | None) -> str:
    return "none" if version is None else f"version {version}"


def metric_table(d: Decision) -> list[str]:
    if not d.scores:
        return []
    roles = list(d.scores)
    head = "| | " + " | ".join(f"{r} (v{d.scores[r].version})" for r in roles) + " |"
    rows = ["", "## Metrics", "", head, "|---" * (len(roles) + 1) + "|"]
    for key in RETRAIN_METRICS:
        cells = [fmt(d.scores[r].metrics.get(key)) for r in roles]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    rows.append(
        "| trained on data | " + " | ".join(f"`{(d.scores[r].dataset_hash or '?')[:12]}`" for r in roles)
    )
    rows[-1] += " |"
    rows.append("| measured on | " + " | ".join(d.scores[r].measured for r in roles) + " |")
    return rows


def class_table(d: Decision) -> list[str]:
    if not (d.verdict and d.verdict.class_deltas):
        return []
    champion, challenger = d.scores[CHAMPION], d.scores[CHALLENGER]
    rows = [
        "",
        "## AP50-95 per class",
        "",
        "| class | champion | challenger | delta | |",
        "|---|---|---|---|---|",
    ]
    for name, delta in d.verdict.class_deltas.items():
        flag = "falls beyond the bound" if name in d.verdict.regressions else ""
        cells = [
            fmt(champion.per_class.get(name)),
            fmt(challenger.per_class.get(name)),
            f"{delta:+.4f}",
            flag,
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


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
    for key, value in {"retrain.outcome": d.outcome, "retrain.decision_run": run_id}.items():
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


def attempt(cfg: PipelineConfig, command: str, force: bool) -> Decision:
    started = now()
    if command == "rollback":
        return rollback(cfg, started)  # its errors change nothing: exit 2 with the message
    try:
        return retrain(cfg, force, started)
    except Exception as exc:  # a scheduled job's failure must reach the decision log, not only stderr
        traceback.print_exc()
        return failed(cfg, command, started, exc)


def main(argv: list[str], prog: str = "retrain", command: str = "retrain") -> int:
    args = build_parser(prog, command).parse_args(argv)
    cfg = load_params(args.params)
    wait = getattr(args, "wait", cfg.retrain.lock_wait)
    try:
        with hold_lock(Path(cfg.retrain.lock_file), wait):
            decision = attempt(cfg, command, getattr(args, "force", False))
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
