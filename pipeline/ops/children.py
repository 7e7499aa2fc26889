"""Child processes that die with the retrain that started them.

A scheduler that gives up on a retrain kills it, often with SIGKILL, which no handler sees. Its
`dvc repro` child, and the stage commands under it, would go on training and registering models
that no decision ever follows. So each child starts in its own process group, with two guards:

- Linux's PR_SET_PDEATHSIG makes the kernel send the child SIGKILL the moment its parent dies;
- a watchdog process holds the read end of a pipe only the parent writes to: when the parent dies
  the pipe closes and the watchdog kills the child's whole group (the grandchildren DVC started,
  which PR_SET_PDEATHSIG does not reach). A parent that finishes normally writes "done" first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

# Test hook: set to a file path, the retrain writes its child's pid there right after starting it
# and SIGKILLs itself, a deterministic moment for the kill test.
KILL_AFTER_CHILD_START = "PIPELINE_RETRAIN_KILL_AFTER_CHILD_START"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
DONE = "done"
WATCHDOG = f"""
import os, signal, sys
if sys.stdin.read() != {DONE!r}:  # EOF without "done": the parent died
    try:
        os.killpg(int(sys.argv[1]), signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def die_with_parent() -> None:
    """Runs in the child between fork and exec."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_bound(argv: list[str], env: dict[str, str]) -> int:
    """Run `argv` to its end and return its exit status; it and its descendants die with us."""
    linux = sys.platform.startswith("linux")
    child = subprocess.Popen(
        argv, env=env, start_new_session=True, preexec_fn=die_with_parent if linux else None
    )
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(child.pid)],
        stdin=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    kill_switch(child.pid)
    try:
        return child.wait()
    except BaseException:  # Ctrl-C: in its own group, the child no longer gets the terminal's SIGINT
        os.killpg(child.pid, signal.SIGKILL)
        raise
    finally:
        watchdog.communicate(DONE)


def kill_switch(child_pid: int) -> None:
    pid_file = os.environ.get(KILL_AFTER_CHILD_START)
    if pid_file:
        with open(pid_file, "w") as handle:
            handle.write(str(child_pid))
        os.kill(os.getpid(), signal.SIGKILL)
