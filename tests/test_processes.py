"""store.processes: liveness and start time of processes on this host."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from store import processes


def test_this_process_is_alive_and_started_before_now() -> None:
    assert processes.pid_alive(os.getpid())
    started = processes.start_time(os.getpid())
    assert started is not None and started <= time.time()
    assert processes.start_token(os.getpid()) is not None


def test_ids_that_name_no_process_are_not_alive() -> None:
    assert not processes.pid_alive(0)
    assert not processes.pid_alive(-1)
    assert processes.start_time(-1) is None


def test_an_exited_child_is_not_alive_before_or_after_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while processes.pid_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not processes.pid_alive(child.pid)  # a zombie until reaped
    finally:
        child.wait()
    assert not processes.pid_alive(child.pid)


def test_a_later_process_has_a_later_start() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        mine, its = processes.start_time(os.getpid()), processes.start_time(child.pid)
        assert mine is not None and its is not None and its >= mine
        assert processes.start_token(child.pid) != processes.start_token(os.getpid())
    finally:
        child.kill()
        child.wait()
