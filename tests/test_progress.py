"""The harness's waits (tests/comfy_host/progress.py) fail on a hang, never on a slow machine: a
command that takes far longer than its budget in wall time passes while it does little work, a
silent stall and a loop that never ends are each stopped and named."""

import subprocess
import sys
import time

import psutil
import pytest

from comfy_host import progress, run_watched


def test_a_slow_command_is_not_failed_by_the_wall_clock():
    """Four seconds of wall time on a budget of one second: it uses little CPU, so it passes
    (what a wall-clock timeout of its budget failed; on a busy machine every command is slow)."""
    script = "import time\nfor i in range(20):\n    time.sleep(0.2)\nprint('done')\n"
    started = time.monotonic()
    result = run_watched([sys.executable, "-c", script], budget=1)
    assert time.monotonic() - started > 4
    assert result.returncode == 0 and result.stdout == "done\n", result


def test_a_stalled_command_is_stopped_and_named(monkeypatch):
    monkeypatch.setattr(progress, "STALL_SECONDS", 3.0)
    script = "import time\ntime.sleep(600)\n"
    with pytest.raises(TimeoutError, match="no CPU time used and nothing written for 3s"):
        run_watched([sys.executable, "-c", script], budget=600)


def test_a_loop_that_never_ends_is_stopped_by_its_cpu_budget(tmp_path):
    pid_file = tmp_path / "pid"
    script = (f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
              "while True:\n    pass\n")
    with pytest.raises(TimeoutError, match=r"CPU-seconds, over its hang guard of 1s"):
        run_watched([sys.executable, "-c", script], budget=1)
    assert not psutil.pid_exists(int(pid_file.read_text())), "the looping process must be killed"


def test_children_count_as_progress(tmp_path):
    """A parent that only waits (a launcher like torchrun) while its child computes: the
    child's CPU time is the parent's progress."""
    done = tmp_path / "done"
    child = ("import time\nwhile time.process_time() < 1:\n    pass\n"
             f"open({str(done)!r}, 'w').close()\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys\n"
                               f"subprocess.run([sys.executable, '-c', {child!r}])\n"])
    try:
        watch = progress.Watch(parent.pid, 60, "the child's first CPU-second")
        while not done.exists():
            watch.check()
            time.sleep(0.1)
        own = psutil.Process(parent.pid).cpu_times()
        counted = progress._cpu_seconds(psutil.Process(parent.pid))
        # the child's CPU-second, read in clock ticks (0.01 s): allow for the rounding
        assert counted - own.user - own.system >= 0.9, counted
    finally:
        progress.kill_family(parent)
        parent.wait()
