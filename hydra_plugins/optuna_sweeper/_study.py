"""The study in its storage: opening it, the trial budget, discarded trials, samplers and pruners.

`n_trials` is the total for the study, counted in the storage, so any number of workers (and a
rerun of the same command) stop together at that total. Counted are the trials that are, or will
be, results: COMPLETE, PRUNED and FAIL (a configuration that fails is an answer too; a rerun does
not retry it), plus RUNNING and WAITING ones (budget already taken). Not counted are *discarded*
trials: asked by a worker that lost a race for the last places, interrupted (Ctrl-C), or left
RUNNING by a dead worker. Optuna has no state for them, so they are marked FAIL and listed in
the study's user attributes (`discarded:<number>`, one key each so concurrent workers never
overwrite each other); an interrupted or dead one is queued again with the same parameters.

Trial numbers are allocated atomically by the storage, so "the first `n_trials` counted trials
by number" is a rule every worker evaluates the same way: a trial runs only if fewer than
`n_trials` counted trials have a smaller number.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import optuna

DISCARDED_PREFIX = "discarded:"
MLFLOW_PARENT_ATTR = "mlflow_parent_run_id"
RETRY_OF_ATTR = "retry_of"


# ---- storage --------------------------------------------------------------------------------------


def storage_url(configured: str | None, sweep_dir: str | Path, cwd: str | Path) -> str:
    """The configured URL, or SQLite in the sweep directory; relative SQLite paths made absolute
    (jobs may run in another working directory or on another host with the same filesystem)."""
    if configured is None:
        return f"sqlite:///{(Path(cwd) / sweep_dir).resolve() / 'optuna.db'}"
    return installed_driver(absolute_sqlite(configured, cwd))


def installed_driver(url: str) -> str:
    """SQLAlchemy 2 reads `postgresql://` as psycopg 3; the project installs psycopg2, so a URL
    without a driver gets the one that is there (an explicit `postgresql+driver://` is kept)."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def absolute_sqlite(url: str, cwd: str | Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/") and url != "sqlite:///:memory:":
        return f"{prefix}{(Path(cwd) / url[len(prefix) :]).resolve()}"
    return url


def redact(url: str) -> str:
    """The URL without its password, for logs and MLflow tags."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def make_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    import optuna

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    heartbeat = {}
    if heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": requeue_stale,
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        return with_schema_retries(
            lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        )


def with_schema_retries(create, attempts: int = 5):
    """Workers that start together on an empty database all try to create Optuna's tables; the
    losers fail with a duplicate-object error, and find the tables there when they try again."""
    import random
    import time

    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for _ in range(attempts - 1):
        try:
            return create()
        except (IntegrityError, ProgrammingError):
            time.sleep(random.uniform(0.5, 2.0))
    return create()


def open_study(storage, name: str, direction: str | list[str], sampler, pruner) -> optuna.Study:
    """Create the study or load it (another worker, or an earlier run of this command, made it).
    A list of directions makes a multi-objective study."""
    import optuna

    directions = {"directions": list(direction)} if isinstance(direction, list) else {"direction": direction}
    return optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
        **directions,
    )


def check_direction(study: optuna.Study, direction: str | list[str]) -> None:
    from hydra.errors import HydraException

    stored = [d.name.lower() for d in study.directions]
    if stored == (list(direction) if isinstance(direction, list) else [direction]):
        return
    if isinstance(direction, list) or len(stored) > 1:
        key, value = ("directions", f"[{','.join(stored)}]") if len(stored) > 1 else ("direction", stored[0])
        raise HydraException(
            f"study {study.study_name!r} exists with directions {stored}, not {direction}: "
            f"set hydra.sweeper.{key}={value} (and its metrics) or choose another hydra.sweeper.study_name"
        )
    raise HydraException(
        f"study {study.study_name!r} exists with direction {stored[0]}, not {direction}: "
        f"set hydra.sweeper.direction={stored[0]} or choose another hydra.sweeper.study_name"
    )


# ---- samplers and pruners -------------------------------------------------------------------------


def build_pruner(node: DictConfig | Mapping[str, Any]):
    return instantiate(OmegaConf.create(dict(node)) if not isinstance(node, DictConfig) else node)


def build_sampler(node: DictConfig, seed: int | None, grid: Mapping[str, list[Any]] | None):
    """The configured sampler with the sweep's seed (unless the node sets its own)."""
    import inspect

    from hydra.utils import get_class

    cls = get_class(node._target_)
    kwargs: dict[str, Any] = {}
    if seed is not None and "seed" in inspect.signature(cls).parameters and node.get("seed") is None:
        kwargs["seed"] = seed
    if grid is not None:
        kwargs["search_space"] = grid
    sampler = instantiate(node, **kwargs)
    return ask_tell_grid(sampler) if grid is not None else sampler


def ask_tell_grid(sampler):
    """GridSampler calls `study.stop()` after the last grid point, which Optuna only allows inside
    `study.optimize`; with ask-and-tell the sweep stops by its own budget (capped at the grid)."""
    sampler.after_trial = lambda study, trial, state, values: None
    return sampler


def is_grid(node: DictConfig) -> bool:
    return str(node._target_).rsplit(".", 1)[-1] == "GridSampler"


# ---- the budget -----------------------------------------------------------------------------------


def discarded_numbers(study: optuna.Study) -> set[int]:
    return {int(key[len(DISCARDED_PREFIX) :]) for key in study.user_attrs if key.startswith(DISCARDED_PREFIX)}


def counted(
    trials: Iterable[optuna.trial.FrozenTrial], discarded: set[int]
) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.number not in discarded]


def budget_left(study: optuna.Study, n_trials: int) -> int:
    return n_trials - len(counted(study.get_trials(deepcopy=False), discarded_numbers(study)))


def within_budget(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial `number` is among the first `n_trials` counted trials (see the module doc)."""
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < number]
    return len(counted(earlier, discarded_numbers(study))) < n_trials


def failed_count(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return len(counted(trials, discarded_numbers(study)))


def too_many_failures(failed: int, n_trials: int, max_failure_rate: float) -> bool:
    """Failures are measured against the whole budget, so an early failure does not stop a sweep
    that may still succeed, and a sweep where most configurations fail stops early."""
    return failed > max_failure_rate * n_trials


def finished_summary(study: optuna.Study) -> dict[str, int]:
    discarded = discarded_numbers(study)
    summary: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        state = "DISCARDED" if trial.number in discarded else trial.state.name
        summary[state] = summary.get(state, 0) + 1
    return summary


def ask(study: optuna.Study, distributions: Mapping[str, Any], lock: threading.Lock) -> optuna.Trial:
    import optuna

    with lock, warnings.catch_warnings():
        # heartbeats are recorded by the sweeper itself (see Heartbeat), not by study.optimize
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return study.ask(dict(distributions))


def discard(study: optuna.Study, trial_number: int, reason: str, requeue: bool) -> None:
    """Take a trial out of the count (see the module doc); queue its parameters again if asked."""
    from optuna.trial import TrialState

    frozen = study.get_trials(deepcopy=False)[trial_number]
    study.set_user_attr(f"{DISCARDED_PREFIX}{trial_number}", reason)
    if not frozen.state.is_finished():
        study.tell(trial_number, state=TrialState.FAIL, skip_if_finished=True)
    if requeue:
        study.enqueue_trial(frozen.params, user_attrs={RETRY_OF_ATTR: trial_number})


def requeue_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Heartbeat callback: Optuna has already failed the silent trial; discard and re-queue it."""
    discard(study, trial.number, "stale: its worker stopped sending heartbeats", requeue=True)


class Heartbeat:
    """Records a heartbeat for every trial this worker has in flight, from one thread.

    Optuna records heartbeats only inside `study.optimize`; with ask-and-tell the sweeper does it,
    so a worker that dies leaves trials that go stale and are re-queued by the next worker.
    """

    def __init__(self, storage, interval: int | None):
        self.storage, self.interval = storage, interval
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self.thread = threading.Thread(target=self.beat, name="optuna-heartbeat", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()

    def add(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.add(trial_id)
        if self.interval is not None:
            self.storage.record_heartbeat(trial_id)

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.discard(trial_id)

    def beat(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                trial_ids = sorted(self.trial_ids)
            for trial_id in trial_ids:
                self.storage.record_heartbeat(trial_id)


def fail_stale(study: optuna.Study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


# ---- the job's side -------------------------------------------------------------------------------


def reopen_trial(url: str, study_name: str, number: int, pruner) -> optuna.Trial:
    """The running trial `number` of the study, as a Trial object in this (job) process.

    A random sampler is enough here: the job only reports values and asks the pruner."""
    import optuna

    storage = make_storage(url)
    study = optuna.Study(study_name, storage, sampler=optuna.samplers.RandomSampler(), pruner=pruner)
    study_id = storage.get_study_id_from_name(study_name)
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
