"""Starting and resuming runs: creating the run branch and recording what the run starts from."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from store.errors import ObjectNotFoundError
from tracking import catalog, environment, layout, liveness, snapshot
from tracking.errors import RunNotFoundError, RunStateError
from tracking.run import Run

if TYPE_CHECKING:
    from store import Branch, Lake

DEFAULT_FLUSH_INTERVAL = 1.0
DEFAULT_HEARTBEAT_INTERVAL = 10.0


def start_run(
    lake: Lake,
    branch: str | None = None,
    name: str | None = None,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    code_dir: str | os.PathLike[str] | None = None,
    snapshot_code: bool = True,
    merge: bool = True,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    input_commit: str | None = None,
    code: snapshot.CodeSnapshot | None = None,
) -> Run:
    """Start a run on its own branch, created from ``branch`` (default ``main``).

    Records the input commit, user, host, process, Python environment and (unless
    ``snapshot_code`` is false) the code snapshot, and commits that on the run branch before
    returning. Use the run as a context manager, or call :meth:`Run.end`.

    Args:
        lake: the lake.
        branch: the branch to start from and, when the run finishes, merge into. None: start
            from ``main`` and merge nowhere.
        name: a human-readable name (need not be unique).
        run_id: resume this run instead of starting a new one (see :func:`resume_run`).
        parent_run_id: the run this one is nested in (MLflow's nested runs).
        tags: tags to set at once.
        code_dir: the project folder to snapshot (default: the git work tree around the current
            folder, else the current folder).
        snapshot_code: record the code snapshot.
        merge: merge into ``branch`` when the run finishes.
        flush_interval: seconds between background metric flushes.
        heartbeat_interval: seconds between heartbeats; readers call a run stale after three
            missed ones.
        input_commit: start from this commit instead of the head of ``branch`` (a compute job
            pinned to the commit it was submitted with); it still merges into ``branch``.
        code: record this code snapshot instead of capturing one (a compute job records the
            snapshot taken when it was submitted).

    Raises:
        BranchNotFoundError: ``branch`` does not exist.
        RunNotFoundError: ``run_id`` names no run.
        InvalidArgumentError: bad intervals.
    """
    if run_id is not None:
        return resume_run(
            lake,
            run_id,
            merge=merge,
            flush_interval=flush_interval,
            heartbeat_interval=heartbeat_interval,
        )
    _check_intervals(flush_interval, heartbeat_interval)
    target = lake.get_branch(branch) if branch is not None else None
    if input_commit is not None:
        input_commit = lake.resolve(input_commit)
    else:
        input_commit = target.head().id if target is not None else lake.resolve("main")
    new_id = uuid.uuid4().hex
    run_branch = lake.branch(layout.run_branch_short(new_id), source=input_commit)
    env = environment.capture()
    if code is None and snapshot_code:
        code = snapshot.capture(code_dir)
    record: dict[str, Any] = {
        "format_version": layout.FORMAT_VERSION,
        "run_id": new_id,
        "name": name,
        "run_namespace": run_branch.namespace,
        "target_branch": target.name if target is not None else None,
        "run_branch": run_branch.name,
        "parent_run_id": parent_run_id,
        "status": "running",
        "error": None,
        "user": lake.user,
        "host": env.host,
        "pid": env.pid,
        "start_time": datetime.now(UTC),
        "end_time": None,
        "input_commit": input_commit,
        "output_commit": None,
        "git_commit": code.git_commit if code else None,
        "git_dirty": code.git_dirty if code else None,
        "code_root": code.root if code else None,
        "python_version": env.python_version,
        "python_executable": env.python_executable,
        "platform": env.platform,
        "heartbeat_interval": float(heartbeat_interval),
        "sessions": 1,
    }
    run = Run(
        lake,
        run_branch,
        record,
        params={},
        tags={},
        artifacts=[],
        next_part=0,
        merge=merge,
        flush_interval=flush_interval,
    )
    if tags:
        run.set_tags(tags)
    packages = [{"run_id": new_id, "name": n, "version": v} for n, v in env.packages]
    run_branch.write_table(
        layout.run_file(new_id, layout.ENVIRONMENT_FILE),
        pa.Table.from_pylist(packages, schema=layout.ENVIRONMENT_SCHEMA),
    )
    if code is not None:
        _write_code(run_branch, new_id, code)
    run.flush()
    run._heartbeat()
    run._write_record()
    run._commit("start")
    run._begin(heartbeat_interval)
    return run


def resume_run(
    lake: Lake,
    run_id: str,
    *,
    merge: bool = True,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
) -> Run:
    """Reopen a run by id to log more: its status goes back to ``running`` until it ends again.

    What a killed process flushed before it died is kept and committed now.

    Raises:
        RunNotFoundError: no run branch for ``run_id`` in any namespace.
        RunStateError: the run is still running in a live process.
    """
    _check_intervals(flush_interval, heartbeat_interval)
    run_branch = catalog.find_run_branch(lake, run_id)
    try:
        record = run_branch.read_table(layout.run_file(run_id, layout.RUN_FILE)).to_pylist()[0]
    except ObjectNotFoundError:
        raise RunNotFoundError(f"run {run_id} has a branch but no run record") from None
    if record["status"] == "running" and record["pid"] != os.getpid():
        status = liveness.effective_status(
            "running",
            record["host"],
            record["pid"],
            catalog.heartbeat_time(lake, run_branch.name, run_id),
            record["heartbeat_interval"],
            datetime.now(UTC),
        )
        if status == "running":
            raise RunStateError(f"run {run_id} is still running (pid {record['pid']})")
    params = _key_values(run_branch, run_id, layout.PARAMS_FILE)
    tags = _key_values(run_branch, run_id, layout.TAGS_FILE)
    artifacts = _rows(run_branch, run_id, layout.ARTIFACTS_FILE)
    parts = [
        layout.part_number(o.path)
        for o in run_branch.list(f"{layout.run_dir(run_id)}/{layout.METRICS_DIR}/")
    ]
    env = environment.capture()
    record.update(
        status="running",
        end_time=None,
        error=None,
        output_commit=None,
        host=env.host,
        pid=env.pid,
        heartbeat_interval=float(heartbeat_interval),
        sessions=int(record.get("sessions") or 1) + 1,
    )
    run = Run(
        lake,
        run_branch,
        record,
        params=params,
        tags=tags,
        artifacts=artifacts,
        next_part=max((p for p in parts if p is not None), default=-1) + 1,
        merge=merge,
        flush_interval=flush_interval,
    )
    run._heartbeat()
    run._write_record()
    run._commit("resume")
    run._begin(heartbeat_interval)
    return run


def _write_code(run_branch: Branch, run_id: str, code: snapshot.CodeSnapshot) -> None:
    """Store the snapshot's files content-addressed (one batch) and its manifest by name."""
    if code.files:
        run_branch.write_many((layout.code_blob(f.sha256), f.data) for f in code.files)
    rows = [
        {"run_id": run_id, "path": f.path, "size": len(f.data), "sha256": f.sha256}
        for f in code.files
    ]
    run_branch.write_table(
        layout.run_file(run_id, layout.CODE_FILE),
        pa.Table.from_pylist(rows, schema=layout.CODE_SCHEMA),
    )


def _rows(run_branch: Branch, run_id: str, name: str) -> list[dict[str, Any]]:
    try:
        return run_branch.read_table(layout.run_file(run_id, name)).to_pylist()
    except ObjectNotFoundError:
        return []


def _key_values(run_branch: Branch, run_id: str, name: str) -> dict[str, str]:
    return {row["key"]: row["value"] for row in _rows(run_branch, run_id, name)}


def _check_intervals(flush_interval: float, heartbeat_interval: float) -> None:
    from store.errors import InvalidArgumentError

    if not flush_interval > 0 or not heartbeat_interval > 0:
        raise InvalidArgumentError("flush_interval and heartbeat_interval must be positive")
