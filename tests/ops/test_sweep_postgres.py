"""Two sweep workers share one Optuna study (and one MLflow store) on a real PostgreSQL server.

The server runs on loopback from Debian's `postgresql` binaries (installed by .ci/run), in a
temporary data directory, as the `postgres` user when the tests run as root (initdb refuses root).
Both workers run the same command at the same time, as two machines would; the study must end
with exactly the requested number of finished trials, every trial number once, every result
recorded, and every trial nested under the one parent run both workers agree on.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hydra_plugins.optuna_sweeper import _study
from tests.conftest import PROJECT_ROOT
from tests.ops.test_sweep import EXPERIMENT, job_overrides

pytestmark = pytest.mark.postgres
N_TRIALS = 4


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): apt-get install postgresql"
        )
    return Path(found[-1]).parent


def as_server_user() -> list[str]:
    """Command prefix that runs the server binaries as a non-root user when we are root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        pytest.skip("running as root, and `runuser` is missing to start PostgreSQL as another user")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root, and there is no `postgres` user to run the server as")
    return ["runuser", "-u", "postgres", "--"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway server on loopback; yields its URL prefix (append a database name)."""
    binaries, prefix, port = postgres_bin(), as_server_user(), free_port()
    base = Path(tempfile.mkdtemp(prefix="pg-sweep-"))  # not tmp_path: the server user must reach it
    if prefix:
        shutil.chown(base, user="postgres")
    data = base / "data"

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start")
    try:
        for database in ("optuna", "mlflow"):
            run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def start_worker(root: Path, name: str, storage: str, tracking: str) -> subprocess.Popen:
    arguments = [
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=none",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=shared",
        f"hydra.sweeper.n_trials={N_TRIALS}",
        f"hydra.sweeper.experiment_dir={root}/experiment",
        f"hydra.sweep.dir={root}/{name}",
        "train.lr0=tag(log, interval(0.001, 0.01))",
        "train.epochs=1",
        *(o for o in job_overrides(root) if not o.startswith("track.")),
        f"track.tracking_uri={tracking}",
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    log = (root / f"{name}.log").open("w")
    command = [sys.executable, "-m", "pipeline.ops.sweep", "--multirun", *arguments]
    return subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_two_workers_share_one_study(postgres, tmp_path):
    storage = f"{postgres}/optuna"
    tracking = f"postgresql+psycopg2://{postgres.split('://')[1]}/mlflow"
    # The MLflow schema and experiment exist before the workers start (as on a shared server).
    MlflowClient(tracking).create_experiment(EXPERIMENT, artifact_location=str(tmp_path / "artifacts"))

    started = time.monotonic()
    workers = [start_worker(tmp_path, f"worker{i}", storage, tracking) for i in (0, 1)]
    codes = [w.wait(timeout=600) for w in workers]
    logs = {i: (tmp_path / f"worker{i}.log").read_text() for i in (0, 1)}
    assert codes == [0, 0], "\n".join(logs[i][-3000:] for i in (0, 1))
    print(f"two workers, {N_TRIALS} trials: {time.monotonic() - started:.0f} s")

    study = optuna.load_study(study_name="shared", storage=_study.storage_url(storage, ".", tmp_path))
    discarded = _study.discarded_numbers(study)
    counted = [t for t in study.trials if t.number not in discarded]
    assert len(counted) == N_TRIALS
    assert all(t.state == TrialState.COMPLETE for t in counted)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # each number once, none skipped
    assert all(t.state.is_finished() for t in study.trials)  # nothing left running or queued

    # No lost results: every trial's value is the one its job computed, in the worker's directory.
    workers_used = set()
    for trial in counted:
        job_dir = Path(trial.user_attrs["job_dir"])
        workers_used.add(job_dir.parent.name)
        outcome = json.loads((job_dir / "outcome.json").read_text())
        assert math.isclose(outcome["value"], trial.value)
    assert workers_used == {"worker0", "worker1"}, "both workers should have run trials"

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    parents = client.search_runs([experiment.experiment_id], "tags.`sweep.study` = 'shared'")
    assert len(parents) == 1  # both workers log under the same parent run
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    )
    assert sorted(r.info.run_name for r in children) == sorted(f"trial-{t.number:04d}" for t in counted)
