"""The retrain lock: one retrain or rollback at a time, freed by the OS when its holder dies."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.core.errors import PipelineError
from pipeline.core.io import read_json, write_json
from pipeline.ops.decision import now


class RetrainBusy(PipelineError):
    """Another retrain or rollback holds the lock."""


def owner_file(lock: Path) -> Path:
    return lock.with_name(lock.name + ".owner")


@contextmanager
def hold_lock(lock: Path, wait: float | None) -> Iterator[None]:
    """Exclusive for the whole command; the OS frees it when the holder dies, even by SIGKILL."""
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
