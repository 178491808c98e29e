"""Waits that fail when the work stops, never because a clock ran out.

A shared or slow machine stretches every wall-clock budget, and a test must not fail there for
time alone. So a wait watches the processes doing the work (a ComfyUI server, a command a test
runs, and their children) and fails only on one of two hang guards:

- stalled: they used no CPU time and wrote nothing for `STALL_SECONDS` (a deadlock, a prompt the
  server lost). A process that gets only a sliver of a busy CPU still moves, so slowness alone
  never trips it.
- over budget: the work used more CPU time than `budget` seconds on every core the process may
  run on (a loop that never ends). That is `budget` seconds of wall time or more on a machine to
  itself, and proportionally more on a busy one, where the work gets less CPU per second.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

STALL_SECONDS = 600.0  # a process starved by nice 19 under a load of 10 still ticks within it
CHECK_SECONDS = 1.0  # how often a wait looks at the processes (the work itself is not slowed)


def usable_cores(pid: int) -> int:
    try:
        return len(os.sched_getaffinity(pid))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cpu_seconds(process: psutil.Process) -> float:
    """CPU time of the process and its children, the finished ones included."""
    total = 0.0
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for member in family:
        try:
            times = member.cpu_times()
        except psutil.Error:  # ended meanwhile: its parent's children_* hold it once reaped
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class Watch:
    """The hang guards for one wait on the process `pid` (and its children), from now on.

    `outputs`: files the work writes (a server log); growing counts as progress too. `budget`:
    the hang guard in seconds of the machine to itself (see the module docstring)."""

    def __init__(self, pid: int, budget: float, what: str, outputs: Sequence[Path] = ()):
        self.process = psutil.Process(pid)
        self.what = what
        self.outputs = [Path(p) for p in outputs]
        self.budget = budget
        self.cpu_limit = budget * usable_cores(pid)
        self.cpu_start = _cpu_seconds(self.process)
        self.last_state = self._state()
        self.last_move = time.monotonic()
        self.last_check = self.last_move

    def _state(self) -> tuple:
        sizes = tuple(p.stat().st_size if p.exists() else -1 for p in self.outputs)
        return _cpu_seconds(self.process), sizes

    def check(self, details: Callable[[], str] = str) -> None:
        """Raise TimeoutError, naming the guard and adding `details()` (a log's tail), if the
        work stalled or ran over budget; it looks at most once per CHECK_SECONDS, so a poll
        loop may call it every time round."""
        now = time.monotonic()
        if now - self.last_check < CHECK_SECONDS:
            return
        self.last_check = now
        state = self._state()
        if state != self.last_state:
            self.last_state, self.last_move = state, now
        used = state[0] - self.cpu_start
        if now - self.last_move > STALL_SECONDS:
            raise TimeoutError(f"{self.what}: no CPU time used and nothing written for "
                               f"{STALL_SECONDS:.0f}s (a hang, not a slow machine)\n{details()}")
        if used > self.cpu_limit:
            raise TimeoutError(
                f"{self.what}: used {used:.0f} CPU-seconds, over its hang guard of "
                f"{self.budget:.0f}s on each of {self.cpu_limit / self.budget:.0f} cores "
                f"(a loop that does not end?)\n{details()}")


def communicate_watched(proc: subprocess.Popen, budget: float, what: str) -> tuple:
    """`proc.communicate()` under a Watch; on a hang guard the process and its children are
    killed and TimeoutError is raised with the end of what they printed."""
    watch = Watch(proc.pid, budget, what)
    while True:
        try:
            return proc.communicate(timeout=CHECK_SECONDS)
        except subprocess.TimeoutExpired:
            try:
                watch.check()
            except TimeoutError as error:
                kill_family(proc)
                printed = "".join(str(part)[-3000:] for part in proc.communicate() if part)
                raise TimeoutError(f"{error}{printed}") from None


def run_watched(command: Sequence[str], budget: float, **popen) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True, **popen)` with the hang guards
    of a Watch in place of a wall-clock timeout."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)
    stdout, stderr = communicate_watched(proc, budget, " ".join(map(str, command))[:200])
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def kill_family(proc: subprocess.Popen) -> None:
    """SIGKILL the process and every child it started (the caller reaps the process)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()
