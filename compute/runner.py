"""The job side: run one attempt of a job in this process and record its outcome.

Started by a supervisor (:mod:`compute.supervise`) as
``python -P -m compute.runner <job folder> <attempt> <log offset>`` with stdout and stderr
going to the job's log. It opens the lake, starts the attempt's tracking run on its own branch
from the pinned input commit, runs the user's callable or command in the checkout of the code
snapshot, and then either commits and merges the run (success) or records it failed. What it
tells the supervisor goes through files in the attempt folder (``run.json``, ``outcome.json``,
``result.pkl``), never through stdout, so nothing the job prints can corrupt it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import runpy
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import cloudpickle

import store
import tracking
from compute.code import load_snapshot
from compute.inside import JobContext, PinnedLake, activate
from compute.model import PYTHON_NAMES, JobSpec
from compute.state import JobFolder, write_atomic
from store.errors import ConflictError
from tracking import layout

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its supervisor dies, so a supervisor killed with
    SIGKILL never leaves a job running without a lease."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class CommandFailed(Exception):
    """The job's command exited with a non-zero status."""


def run_command(argv: tuple[str, ...]) -> None:
    """Run a command job: ``python script.py ...`` / ``python -m mod ...`` in this process (so
    :func:`compute.context` works in it), anything else as a child process.

    Raises:
        CommandFailed: a non-zero exit status.
    """
    if argv[0] in PYTHON_NAMES and len(argv) >= 2 and argv[1] != "-c":
        if argv[1] == "-m" and len(argv) >= 3:
            sys.argv = [argv[2], *argv[3:]]
            target, as_module = argv[2], True
        else:
            sys.argv = list(argv[1:])
            target, as_module = argv[1], False
        try:
            if as_module:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise CommandFailed(f"{' '.join(argv)} exited with status {exc.code}") from None
        return
    command = list(argv)
    if command[0] in PYTHON_NAMES:
        command[0] = sys.executable
    sys.stdout.flush()
    sys.stderr.flush()
    code = subprocess.call(command)
    if code != 0:
        raise CommandFailed(f"{' '.join(argv)} exited with status {code}")


def _store_log(run: Any, folder: JobFolder, attempt: int, offset: int) -> None:
    """Attach this attempt's log so far to its run, next to the run's own files
    (``_flowlake/runs/<run_id>/logs/attempt-<n>.log``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(folder.log_file, "rb") as f:
        f.seek(offset)
        data = f.read()
    local = folder.attempt_dir(attempt) / f"attempt-{attempt}.log"
    local.write_bytes(data)
    run.log_artifact(local, artifact_path=f"{layout.run_dir(run.id)}/logs")


def main(job_dir: str, attempt: int, offset: int) -> int:
    _die_with_parent()
    began = time.perf_counter()
    folder = JobFolder(Path(job_dir))
    spec: JobSpec = folder.spec()
    out = folder.attempt_dir(attempt)
    out.mkdir(parents=True, exist_ok=True)
    gpus = tuple(int(g) for g in os.environ.get("FLOWLAKE_JOB_GPUS", "").split(",") if g)
    lake = store.open(spec.lake_location, namespace=spec.namespace, user=spec.user, create=False)
    code, checkout = load_snapshot(folder.path.parent.parent / "code", spec.code_snapshot)
    run = tracking.start_run(
        lake,
        branch=spec.output_branch,
        name=spec.name,
        input_commit=spec.input_commit,
        code=code,
        tags={
            "compute.job_id": spec.job_id,
            "compute.backend": spec.backend,
            "compute.attempt": attempt,
            "compute.gpus": ",".join(map(str, gpus)),
            "compute.resources": spec.resources.describe(),
        },
    )
    started = time.perf_counter()
    write_atomic(
        out / "run.json", json.dumps({"run_id": run.id, "run_branch": run.run_branch}).encode()
    )
    ctx = JobContext(
        lake=PinnedLake(lake, spec.input_commit),
        input_commit=spec.input_commit,
        output_branch=run.run_branch,
        target_branch=spec.output_branch,
        branch=lake.get_branch(run.run_branch),
        run=run,
        job_id=spec.job_id,
        attempt=attempt,
        gpus=gpus,
    )
    activate(ctx)
    # The job runs its snapshot: imports resolve there first, relative paths start there.
    sys.path.insert(0, str(checkout))
    os.chdir(checkout)
    outcome: dict[str, Any] = {"run_id": run.id}
    try:
        if spec.kind == "command":
            run_command(spec.command)
            result = None
        else:
            fn, args = pickle.loads(folder.payload_file.read_bytes())
            result = fn(**args)
        payload = cloudpickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # the job's own failure, whatever it is
        text = traceback.format_exc()
        if isinstance(exc, CommandFailed):
            text = ""
        else:
            print(text, file=sys.stderr, end="")
        error = f"{type(exc).__name__}: {exc}"
        _store_log(run, folder, attempt, offset)
        run.end("failed", error=error)
        outcome.update(status="failed", error=error, traceback=text or None)
        write_atomic(out / "outcome.json", json.dumps(outcome).encode())
        return 1
    (out / "result.pkl").write_bytes(payload)
    user_done = time.perf_counter()
    _store_log(run, folder, attempt, offset)
    try:
        run.end("finished")
    except ConflictError as exc:
        outcome.update(status="failed", error=f"the job's outputs conflict: {exc}")
        write_atomic(out / "outcome.json", json.dumps(outcome).encode())
        return 1
    head = lake.get_branch(spec.output_branch).head().id
    ended = time.perf_counter()
    outcome.update(
        status="succeeded",
        output_commit=run.merge_commit or head,
        # Seconds per phase, for benchmarks: opening the lake and starting the run (versioning
        # before), the user's code, storing the log and committing and merging (after).
        timings={
            "setup": started - began,
            "user": user_done - started,
            "finish": ended - user_done,
        },
    )
    write_atomic(out / "outcome.json", json.dumps(outcome).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
