"""Starting and resuming runs: creating the run branch and recording what the run starts from."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from store.branch import Branch
from store.errors import AlreadyExistsError, ObjectNotFoundError, StoreError
from store.names import Namespace, parse_branch
from store.policy.enforce import perimeter_of
from tracking import catalog, environment, layout, liveness, localcache, snapshot
from tracking import run as run_module
from tracking.errors import RunNotFoundError, RunStateError
from tracking.lake_argument import require_lake
from tracking.run import Run

if TYPE_CHECKING:
    from collections.abc import Callable

    from store import Commit, Lake

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
    cache_dir: str | os.PathLike[str] | None = None,
) -> Run:
    """Start a run on its own branch, created from ``branch`` (default ``main``).

    Records the input commit, user, host, process, Python environment and (unless
    ``snapshot_code`` is false) the code snapshot on the run branch before returning; they are
    committed with everything else when the run ends (until then readers see them as the run
    branch's uncommitted changes, and :func:`resume_run` commits them after a crash). Use the
    run as a context manager, or call :meth:`Run.end`.

    Work that repeats from run to run is reused through a local cache (never the source of
    truth, see :mod:`tracking.localcache`): the list of installed distributions while the
    interpreter's ``sys.path`` folders are unchanged, a source file's hash while its size and
    modification time are, and ``git status`` while ``HEAD``, the index and the files are.

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
        cache_dir: the local cache folder (default ``$FLOWLAKE_CACHE_DIR``, else
            ``~/.cache/flowlake``).

    Raises:
        BranchNotFoundError: ``branch`` does not exist.
        RunNotFoundError: ``run_id`` names no run.
        InvalidArgumentError: ``lake`` is not a Lake, or bad intervals.
    """
    require_lake(lake, "tracking.start_run")
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
    cache = os.fspath(cache_dir) if cache_dir is not None else localcache.cache_root()
    # The snapshot's git commands (none when the cache says git would answer as last time)
    # run while the environment is read.
    pending = (
        snapshot.PendingListing(code_dir, cache_dir=cache)
        if code is None and snapshot_code
        else None
    )
    # The run branch is created below, with the start records, in one step: a handle first.
    short = layout.run_branch_short(new_id)
    run_branch = Branch(lake, parse_branch(short, Namespace.parse(lake.namespace)))
    try:
        env = environment.capture(cache)
    except BaseException:
        if pending is not None:
            pending.close()
        raise
    blobs = _CodeBlobs(cache, lake.location, target.name if target is not None else None)
    held = blobs.present_at(input_commit)
    listed = (
        snapshot.CodeListing.of(code)
        if code is not None
        else pending.finish(cache_dir=cache, held=held)
        if pending is not None
        else None
    )
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
        "git_commit": listed.git_commit if listed else None,
        "git_dirty": listed.git_dirty if listed else None,
        "code_root": listed.root if listed else None,
        "python_version": env.python_version,
        "python_executable": env.python_executable,
        "platform": env.platform,
        "heartbeat_interval": float(heartbeat_interval),
        "sessions": 1,
        "perimeter": perimeter_of(lake.backend),
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
        head=input_commit,
    )
    if tags:
        run.set_tags(tags)
    # One batch, staged as the run branch is created (one transaction on the embedded backend).
    # The record is in it too: at the start it only says "running", so a reader that sees it
    # before the other files of the batch (lakeFS uploads a batch in parallel) sees a live run
    # that has not logged yet. Nothing is committed now; the run's end commits it all.
    items = [
        (layout.run_file(new_id, layout.ENVIRONMENT_FILE), environment_manifest(env.packages)),
        *run._dirty_files(),
        *run._heartbeat_item(),
    ]
    if listed is not None:
        items += _code_items(new_id, listed, held)
        run._after_merge = blobs.remember(input_commit, {f.sha256 for f in listed.files})
    items.append((layout.run_file(new_id, layout.RUN_FILE), run._record_bytes()))
    lake.branch(short, source=input_commit, writes=items)
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

    What a killed process flushed before it died is kept and committed now. One session at a
    time: of several processes resuming the run at once exactly one succeeds (see
    :func:`_claim`), and a run whose process is alive is refused. If a session that was
    believed dead (a stale heartbeat on another host) is still alive, it notices at its next
    flush, heartbeat or end that the run branch moved, and from then on writes nothing and
    raises :class:`RunStateError`.

    Raises:
        RunNotFoundError: no run branch for ``run_id`` in any namespace.
        RunStateError: the run is still running in a live process.
        InvalidArgumentError: ``lake`` is not a Lake, or bad intervals.
    """
    require_lake(lake, "tracking.resume_run")
    _check_intervals(flush_interval, heartbeat_interval)
    run_branch = catalog.find_run_branch(lake, run_id)
    head = run_branch.head().id
    record = _read_record(run_branch, run_id)
    _refuse_if_live(lake, run_branch, run_id, record)
    session = int(record.get("sessions") or 1) + 1
    claim = _claim(lake, run_branch, run_id, session, head)
    try:
        params = _key_values(run_branch, run_id, layout.PARAMS_FILE)
        tags = _key_values(run_branch, run_id, layout.TAGS_FILE)
        artifacts = _rows(run_branch, run_id, layout.ARTIFACTS_FILE)
        env = environment.capture(localcache.cache_root())
        record.update(
            status="running",
            end_time=None,
            error=None,
            output_commit=None,
            host=env.host,
            pid=env.pid,
            heartbeat_interval=float(heartbeat_interval),
            sessions=session,
        )
        run = Run(
            lake,
            run_branch,
            record,
            params=params,
            tags=tags,
            artifacts=artifacts,
            next_part=0,
            merge=merge,
            flush_interval=flush_interval,
            head=head,
        )
        run._heartbeat()
        run._write_record()
        run._commit("resume")
        # Listed after the resume commit: a part that an earlier session still managed to
        # write is seen here, and its number is not reused.
        parts = [
            layout.part_number(o.path)
            for o in run_branch.list(f"{layout.run_dir(run_id)}/{layout.METRICS_DIR}/")
        ]
        run._next_part = max((p for p in parts if p is not None), default=-1) + 1
    finally:
        with contextlib.suppress(StoreError):
            lake.delete_tag(claim)
    run._begin(heartbeat_interval)
    return run


#: Prefix of the tags that claim a run's next session while it is being resumed.
CLAIM_TAG_PREFIX = "flowlake-resume-"


def _claim(lake: Lake, run_branch: Branch, run_id: str, session: int, head: str) -> str:
    """Claim session ``session`` of the run: one process wins, whatever the interleaving.

    Creating a tag is atomic on every backend, so of several processes resuming the run at
    once exactly one creates the claim tag; the others are refused. The winner then checks that
    the run branch is still at ``head``, the commit whose record it judged: a process that read
    the run before another resumed it (and removed its tag again) finds the branch moved. The
    winner removes its tag once its resume commit has moved the branch.

    Raises:
        RunStateError: another process claimed the session, or resumed the run meanwhile.
    """
    name = f"{CLAIM_TAG_PREFIX}{run_id}-{session}"
    try:
        lake.tag(name, head)
    except AlreadyExistsError:
        raise RunStateError(
            f"run {run_id} is being resumed by another process (it holds tag {name!r}); if no "
            f"process is resuming it, delete that tag and resume again"
        ) from None
    try:
        moved = run_branch.head().id
    except BaseException:
        with contextlib.suppress(StoreError):
            lake.delete_tag(name)
        raise
    if moved != head:
        with contextlib.suppress(StoreError):
            lake.delete_tag(name)
        raise RunStateError(f"run {run_id} was resumed or ended by another process meanwhile")
    return name


def _read_record(run_branch: Branch, run_id: str) -> dict[str, Any]:
    try:
        rows = run_branch.read_table(layout.run_file(run_id, layout.RUN_FILE)).to_pylist()
    except ObjectNotFoundError:
        raise RunNotFoundError(f"run {run_id} has a branch but no run record") from None
    return rows[0]  # type: ignore[no-any-return]


def _refuse_if_live(lake: Lake, run_branch: Branch, run_id: str, record: dict[str, Any]) -> None:
    """Refuse to resume a run that a live process is running.

    A ``running`` run is live when its process exists on this host (whatever its heartbeat
    says: a busy process may miss beats), or when its heartbeat is recent. Only a run whose
    process is gone, or whose heartbeat went stale on another host, is resumed. A run recorded
    as running by this very process (one whose end failed) may be resumed here.
    """
    if record["status"] != "running" or record["pid"] == os.getpid():
        return
    pid = record["pid"]
    if record["host"] == socket.gethostname() and pid is not None and liveness.pid_alive(pid):
        raise RunStateError(f"run {run_id} is still running (pid {pid} on this host)")
    status = liveness.effective_status(
        "running",
        record["host"],
        pid,
        catalog.heartbeat_time(lake, run_branch.name, run_id),
        record["heartbeat_interval"],
        datetime.now(UTC),
    )
    if status == "running":
        raise RunStateError(f"run {run_id} is still running (pid {pid} on {record['host']})")


def _code_items(
    run_id: str, code: snapshot.CodeListing, held: frozenset[str]
) -> list[tuple[str, bytes]]:
    """The snapshot's files content-addressed (but those in ``held``, hashes of files the run
    branch holds already; :func:`snapshot.listing` read only the others), and its manifest by
    name."""
    manifest = code_manifest(tuple((f.path, f.size, f.sha256) for f in code.files))
    blobs = {
        layout.code_blob(f.sha256): f.data
        for f in code.files
        if f.sha256 not in held and f.data is not None
    }
    return [*blobs.items(), (layout.run_file(run_id, layout.CODE_FILE), manifest)]


#: Manifests remembered per process (the last few distinct ones: a sweep repeats one).
MANIFESTS_KEPT = 4


@functools.lru_cache(maxsize=MANIFESTS_KEPT)
def code_manifest(files: tuple[tuple[str, int, str], ...]) -> bytes:
    """The bytes of a code manifest (``layout.CODE_FILE``) listing ``files``, each ``(path,
    size in bytes, SHA-256 hex)`` in snapshot order.

    They depend on ``files`` only (the run is the folder the manifest is written to), so runs
    of an unchanged project write the same bytes, stored once; and, remembered per process for
    the last :data:`MANIFESTS_KEPT` listings, they are encoded once (~0.4 ms for 200 files).
    """
    paths, sizes, digests = zip(*files, strict=True) if files else ((), (), ())
    columns = [
        pa.array(paths, pa.string()),
        pa.array(sizes, pa.int64()),
        pa.array(digests, pa.string()),
    ]
    return run_module.parquet_bytes(pa.Table.from_arrays(columns, schema=layout.CODE_SCHEMA))


@functools.lru_cache(maxsize=MANIFESTS_KEPT)
def environment_manifest(packages: tuple[tuple[str, str], ...]) -> bytes:
    """The bytes of an environment manifest (``layout.ENVIRONMENT_FILE``) listing ``packages``
    (``(name, version)`` pairs, as :attr:`environment.Environment.packages`): as
    :func:`code_manifest`, they depend on ``packages`` only and are encoded once per process."""
    names, versions = zip(*packages, strict=True) if packages else ((), ())
    columns = [pa.array(names, pa.string()), pa.array(versions, pa.string())]
    return run_module.parquet_bytes(pa.Table.from_arrays(columns, schema=layout.ENVIRONMENT_SCHEMA))


class _CodeBlobs:
    """Which code files a branch's head is known to hold, so a run started from it writes only
    the others (rewriting a held file stages a change the commit then drops, at a cost that
    grows with the project).

    Known from the local cache (see :mod:`tracking.localcache`), one entry per lake, target
    branch and commit: the hashes of the code files a run's merge commit held. It is remembered
    only when the merge found the target where the run started, so that the merge commit's tree
    is the run's final tree, which holds every file of its snapshot; it is used only while the
    target's head is still that commit (commits never change). Each entry has its own file, and
    the start commit's is removed once the next one is written: a new file is cheaper to write
    than one renamed over an existing file (see :mod:`tracking.localcache`).
    """

    def __init__(self, cache_dir: str, location: str, target: str | None) -> None:
        self._cache_dir = cache_dir
        self._key = f"{location}\0{target}"
        self._target = target

    def _path(self, commit: str) -> str:
        key = hashlib.sha256(f"{self._key}\0{commit}".encode("utf-8", "surrogatepass"))
        return localcache.entry_path(self._cache_dir, "code-blobs", key.hexdigest())

    def present_at(self, commit: str) -> frozenset[str]:
        """Hashes of code files known to be at ``commit`` (empty when nothing is known)."""
        entry = localcache.load(self._path(commit)) if self._target is not None else None
        if not isinstance(entry, dict) or entry.get("commit") != commit:
            return frozenset()
        blobs = entry.get("blobs")
        if not isinstance(blobs, list) or not all(isinstance(b, str) for b in blobs):
            return frozenset()
        return frozenset(blobs)

    def remember(self, start: str, blobs: set[str]) -> Callable[[Commit], None] | None:
        """What to do with the run's merge commit: remember ``blobs`` as held by it when its
        target's side is ``start``, and forget what was known of ``start`` (the target has
        moved on from it)."""
        if self._target is None:
            return None

        def merged(commit: Commit) -> None:
            if commit.parents and commit.parents[0] == start:
                localcache.store(
                    self._path(commit.id), {"commit": commit.id, "blobs": sorted(blobs)}
                )
            if commit.id != start:
                localcache.remove(self._path(start))

        return merged


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
