"""Atomic file and folder writes: an interrupted stage never leaves a half-written output."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.faults import kill_if_armed


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes files private; outputs are ordinary readable files
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path | str, payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


OLD_MARK = ".old-"  # `.{name}.old-{token}`: the previous folder while a swap is under way


def swap_dir(new: Path | str, target: Path | str) -> None:
    """Put the finished folder `new` in place of `target`, which is always the old or the new folder,
    or (killed between the two renames) missing with its previous version beside it, which
    `recover_swap` restores."""
    new, target = Path(new), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_swap(target)
    old = target.parent / f".{target.name}{OLD_MARK}{secrets.token_hex(4)}"
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    kill_if_armed("swap_between_renames")
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_swap(target: Path | str) -> list[Path]:
    """Clean up after a swap that was killed: a missing `target` gets its previous version back,
    every other leftover previous version is removed. Returns the folders removed."""
    target = Path(target)
    leftovers = sorted(target.parent.glob(f".{target.name}{OLD_MARK}*"), key=lambda p: p.stat().st_mtime)
    if leftovers and not (target.exists() or target.is_symlink()):
        os.replace(leftovers.pop(), target)  # the newest previous version was the live one
    for stale in leftovers:
        shutil.rmtree(stale, ignore_errors=True)
    return leftovers
