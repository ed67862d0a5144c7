"""``Run``: one tracked execution, writing everything it logs on its own branch.

A run works on a branch ``run-<run_id>`` created from the branch it was started on. Metrics are
buffered in memory and written as Parquet parts by a background thread; params, tags and the
artifact list are rewritten whole when they change. On a clean exit the run branch is committed
and merged into the branch the run was started on; on an exception it is committed with status
``failed`` and never merged. See :mod:`tracking.layout` for the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import threading
import time
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa

from store.errors import InvalidArgumentError, NothingToCommitError
from tracking import buffer, exits, layout, points
from tracking.errors import ParamChangedError, RunStateError
from tracking.model import Artifact

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from store import Branch, Commit, Lake

#: A flush starts early once this many points wait, bounding memory and part size.
MAX_BUFFERED_POINTS = 2_000_000
_now = time.time


class Run:
    """A tracked run. Build it with :func:`tracking.start_run` or :func:`tracking.resume_run`.

    Use it as a context manager: a clean exit ends it ``finished`` (and merges its branch into
    the branch it was started on), an exception ends it ``failed``, ``KeyboardInterrupt`` ends
    it ``killed``; failed and killed runs stay on their own branch.
    """

    def __init__(
        self,
        lake: Lake,
        run_branch: Branch,
        record: dict[str, Any],
        *,
        params: dict[str, str],
        tags: dict[str, str],
        artifacts: list[dict[str, Any]],
        next_part: int,
        merge: bool,
        flush_interval: float,
        head: str,
    ) -> None:
        self._lake = lake
        # The run branch's head as this session left it: anything else means another session
        # took the run over, and this one must not write again (see _check_owner).
        self._head = head
        self._branch = run_branch
        self._record = record
        self._params = params
        self._tags = tags
        self._artifacts = artifacts
        self._next_part = next_part
        self._merge = merge
        self._flush_interval = flush_interval
        self._dirty: set[str] = set()
        self._buffer = buffer.MetricBuffer()
        self._append = self._buffer.append
        # log_metric's hot path: a closure (see points.metric_logger) standing in for the
        # method below, which documents it; end() points it at _closed_append.
        fast, self._replace_append = points.metric_logger(self._buffer.append)
        fast.__doc__ = Run.log_metric.__doc__
        self.log_metric = fast  # type: ignore[method-assign]
        self._pending: list[buffer.Point] = []
        self._write_lock = threading.RLock()
        self._flusher: buffer.Flusher | None = None
        self._ended = False
        self.merge_commit: str | None = None
        # Called with the merge commit once the run is merged (see lifecycle._CodeBlobs).
        self._after_merge: Callable[[Commit], None] | None = None

    # -- identity --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Run({self.id!r}, name={self.name!r}, status={self.status!r})"

    @property
    def id(self) -> str:
        """The run id: 32 hex digits, unique across the lake."""
        return str(self._record["run_id"])

    @property
    def name(self) -> str | None:
        return self._record["name"]  # type: ignore[no-any-return]

    @property
    def status(self) -> str:
        """``running`` until the run ends, then ``finished``, ``failed`` or ``killed``."""
        return str(self._record["status"])

    @property
    def branch(self) -> str | None:
        """The branch the run was started on (and merges into when it finishes)."""
        return self._record["target_branch"]  # type: ignore[no-any-return]

    @property
    def run_branch(self) -> str:
        """The run's own branch, which keeps everything it wrote, whatever its outcome."""
        return self._branch.name

    @property
    def input_commit(self) -> str:
        """The head of :attr:`branch` (or ``main``) when the run started."""
        return str(self._record["input_commit"])

    @property
    def output_commit(self) -> str | None:
        """The run branch's commit holding the run's final state; None until the run ends."""
        return self._record["output_commit"]  # type: ignore[no-any-return]

    @property
    def start_time(self) -> datetime:
        return self._record["start_time"]  # type: ignore[no-any-return]

    @property
    def end_time(self) -> datetime | None:
        return self._record["end_time"]  # type: ignore[no-any-return]

    @property
    def params(self) -> dict[str, str]:
        return dict(self._params)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    @property
    def artifacts(self) -> list[Artifact]:
        return [Artifact(**{k: a[k] for k in _ARTIFACT_FIELDS}) for a in self._artifacts]

    # -- logging ---------------------------------------------------------------------------------

    def log_metric(
        self, key: str, value: float, step: int | None = None, timestamp: int | None = None
    ) -> None:
        """Record one metric point. Buffered: costs about a list append.

        The point is checked here, so a bad one is refused at this call and never reaches the
        buffer (see :mod:`tracking.points` for exactly what is accepted). (Each run replaces
        this method with an equivalent closure; see ``__init__``.)

        Args:
            key: the metric name: a non-empty printable string of at most 250 characters.
            value: a real number (``int``, ``float``, NumPy scalar, 0-d array or tensor),
                stored as a 64-bit float; NaN and +-inf are kept.
            step: the training step: an integer in the signed 64-bit range, or None.
            timestamp: milliseconds since the epoch, as MLflow takes it, between 2000-01-01
                and 9999-12-31 UTC (default: now).

        Raises:
            InvalidMetricError: the key, value, step or timestamp is not accepted (nothing is
                recorded).
            RunStateError: the run has ended.
        """
        self._append(points.check_point(key, value, step, timestamp, _now))

    def log_metrics(
        self, metrics: dict[str, float], step: int | None = None, timestamp: int | None = None
    ) -> None:
        """Record several metric points with the same step and time.

        Every point is checked before any is recorded, so a bad one records none.

        Raises:
            InvalidMetricError: a key, value, the step or the timestamp is not accepted.
            RunStateError: the run has ended.
        """
        now = _now()
        checked = [
            points.check_point(k, v, step, timestamp, lambda: now) for k, v in metrics.items()
        ]
        append = self._append
        for point in checked:
            append(point)

    def log_param(self, key: str, value: Any) -> None:
        """Record a parameter (stored as text). Parameters are write-once, as in MLflow.

        Raises:
            ParamChangedError: ``key`` was logged before with a different value.
            InvalidArgumentError: ``key`` is not a non-empty string.
            RunStateError: the run has ended.
        """
        self._check_active()
        text = _key(key)
        old = self._params.get(text)
        if old is not None and old != str(value):
            raise ParamChangedError(
                f"param {text!r} was logged as {old!r}; it cannot change to {str(value)!r}"
            )
        self._params[text] = str(value)
        self._dirty.add(layout.PARAMS_FILE)

    def log_params(self, params: dict[str, Any]) -> None:
        """Record several parameters. Raises as :meth:`log_param`."""
        for key, value in params.items():
            self.log_param(key, value)

    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag (stored as text); setting it again replaces it.

        Raises:
            InvalidArgumentError: ``key`` is not a non-empty string.
            RunStateError: the run has ended.
        """
        self._check_active()
        self._tags[_key(key)] = str(value)
        self._dirty.add(layout.TAGS_FILE)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.set_tag(key, value)

    def log_table(self, name: str, table: Any, path: str | None = None) -> Artifact:
        """Write a ``pyarrow.Table`` or pandas ``DataFrame`` as Parquet on the run's branch.

        Args:
            name: the artifact's name.
            table: the table.
            path: the object path (default ``runs/<run_id>/tables/<name>.parquet``).

        Raises:
            InvalidArgumentError: not a table.
            InvalidPathError: a bad name or path.
            RunStateError: the run has ended.
        """
        self._check_active()
        from store.tables import encode

        target = path or f"{layout.artifact_prefix(self.id)}/tables/{_key(name)}.parquet"
        with encode(table) as encoded:
            return self._put_artifact(name, "table", target, encoded)

    def log_model(self, name: str, model: Any, path: str | None = None) -> list[Artifact]:
        """Save a model on the run's branch: a file, a folder, or any picklable object.

        Args:
            name: the model's name.
            model: a path to a file or folder (``str`` or ``os.PathLike``), or an object,
                stored pickled as ``model.pkl``.
            path: the folder to write under (default ``runs/<run_id>/models/<name>``).

        Raises:
            InvalidArgumentError: the object cannot be pickled.
            RunStateError: the run has ended.
        """
        self._check_active()
        prefix = path or f"{layout.artifact_prefix(self.id)}/models/{_key(name)}"
        if isinstance(model, str | os.PathLike):
            return self._put_local(name, "model", os.fspath(model), prefix)
        try:
            data = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise InvalidArgumentError(f"model {name!r} cannot be pickled: {exc}") from None
        return [self._put_artifact(name, "model", f"{prefix}/model.pkl", io.BytesIO(data))]

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> list[Artifact]:
        """Copy a local file or folder onto the run's branch (MLflow's ``log_artifact(s)``).

        Args:
            local_path: the file or folder.
            artifact_path: the folder to write under (default ``runs/<run_id>/files``).

        Raises:
            FileNotFoundError: ``local_path`` does not exist.
            RunStateError: the run has ended.
        """
        self._check_active()
        local = os.fspath(local_path)
        prefix = artifact_path or f"{layout.artifact_prefix(self.id)}/files"
        return self._put_local(os.path.basename(local.rstrip("/")), "file", local, prefix)

    def _put_local(self, name: str, kind: str, local: str, prefix: str) -> list[Artifact]:
        if os.path.isdir(local):
            out = []
            for dirpath, _, filenames in sorted(os.walk(local)):
                for filename in sorted(filenames):
                    full = os.path.join(dirpath, filename)
                    rel = os.path.relpath(full, local).replace(os.sep, "/")
                    with open(full, "rb") as f:
                        out.append(self._put_artifact(name, kind, f"{prefix}/{rel}", f))
            return out
        if not os.path.isfile(local):
            raise FileNotFoundError(f"no file or folder at {local!r}")
        with open(local, "rb") as f:
            return [self._put_artifact(name, kind, f"{prefix}/{os.path.basename(local)}", f)]

    def _put_artifact(self, name: str, kind: str, path: str, source: IO[bytes]) -> Artifact:
        hashing = _HashingReader(source)
        with self._write_lock:
            info = self._branch.write_file(path, hashing)  # type: ignore[arg-type]
            row: dict[str, Any] = {
                "run_id": self.id,
                "name": name,
                "kind": kind,
                "path": path,
                "size": info.size,
                "sha256": hashing.sha256.hexdigest(),
                "checksum": info.checksum,
                "logged_at": datetime.now(UTC),
            }
            self._artifacts[:] = [a for a in self._artifacts if a["path"] != path] + [row]
            self._dirty.add(layout.ARTIFACTS_FILE)
        return Artifact(**{k: row[k] for k in _ARTIFACT_FIELDS})

    # -- flushing --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered point and changed param, tag and artifact list now.

        Raises:
            RunStateError: another session resumed the run; this one writes nothing more.
            StoreError: the store refused the write (the points stay buffered for a retry).
        """
        with self._write_lock:
            chunk = self._pending + self._buffer.drain()
            self._pending = chunk
            if not chunk and not self._dirty:
                return
            self._check_owner()
            if chunk:
                table = buffer.to_table(self.id, chunk)
                self._branch.write_table(
                    layout.metrics_part(self.id, self._next_part),
                    table,
                    **layout.METRICS_PARQUET_OPTIONS,
                )
                self._next_part += 1
                self._pending = []
            for name in sorted(self._dirty):
                self._dirty.discard(name)
                try:
                    self._branch.write_table(layout.run_file(self.id, name), self._table_of(name))
                except BaseException:
                    self._dirty.add(name)
                    raise

    def _dirty_files(self) -> list[tuple[str, bytes]]:
        """The changed param, tag and artifact files as ``(path, Parquet bytes)``, marked
        written (for a caller that writes them in its own batch)."""
        items = [
            (layout.run_file(self.id, name), parquet_bytes(self._table_of(name)))
            for name in sorted(self._dirty)
        ]
        self._dirty.clear()
        return items

    def _check_owner(self) -> None:
        """Refuse once the run branch has moved from where this session left it.

        Only a run's own session commits on its run branch, so a moved head means another
        process resumed the run (its resume commit). Writing on would overwrite that session's
        metric parts and record.

        Raises:
            RunStateError: the branch moved.
        """
        head = self._branch.head().id
        if head != self._head:
            raise RunStateError(
                f"run {self.id} was resumed by another session (its branch moved from "
                f"{self._head[:12]} to {head[:12]}); this session writes nothing more"
            )

    def _table_of(self, name: str) -> pa.Table:
        if name == layout.ARTIFACTS_FILE:
            return pa.Table.from_pylist(self._artifacts, schema=layout.ARTIFACTS_SCHEMA)
        values = self._params if name == layout.PARAMS_FILE else self._tags
        rows = [{"run_id": self.id, "key": k, "value": v} for k, v in sorted(values.items())]
        return pa.Table.from_pylist(rows, schema=layout.KEY_VALUE_SCHEMA)

    def _heartbeat_item(self) -> list[tuple[str, bytes]]:
        data = json.dumps({"time": time.time(), "pid": self._record["pid"]}).encode()
        return [(layout.run_file(self.id, layout.HEARTBEAT_FILE), data)]

    def _heartbeat(self) -> None:
        with self._write_lock:
            self._check_owner()
            ((path, data),) = self._heartbeat_item()
            self._branch.write_bytes(path, data)

    def _record_bytes(self) -> bytes:
        return parquet_bytes(pa.Table.from_pylist([self._record], schema=layout.RUN_SCHEMA))

    def _write_record(self) -> None:
        table = pa.Table.from_pylist([self._record], schema=layout.RUN_SCHEMA)
        with self._write_lock:
            self._branch.write_table(layout.run_file(self.id, layout.RUN_FILE), table)

    def _commit(self, event: str, writes: dict[str, bytes] | None = None) -> str:
        metadata = {"tracking.run_id": self.id, "tracking.event": event}
        with self._write_lock:
            with contextlib.suppress(NothingToCommitError):
                self._head = self._branch.commit(
                    f"run {self.id} {event}", metadata, writes=writes
                ).id
            return self._head

    def _commit_merging(
        self,
        event: str,
        writes: dict[str, bytes],
        merge_message: str,
        merge_metadata: dict[str, str],
    ) -> Commit | None:
        """:meth:`_commit` with ``writes``, merging into the run's target in the same step when
        the backend can; the merge commit, or None when the merge is still to be made."""
        assert self.branch is not None
        metadata = {"tracking.run_id": self.id, "tracking.event": event}
        with self._write_lock, contextlib.suppress(NothingToCommitError):
            commit, merged = self._branch.commit_merging(
                f"run {self.id} {event}",
                metadata,
                writes=writes,
                into=self.branch,
                merge_message=merge_message,
                merge_metadata=merge_metadata,
            )
            self._head = commit.id
            return merged
        return None

    # -- lifecycle -------------------------------------------------------------------------------

    def _begin(self, heartbeat_interval: float) -> None:
        """Start the background flusher and the exit hook (called once the run is recorded)."""
        self._flusher = buffer.Flusher(
            self.flush,
            self._heartbeat,
            lambda: len(self._buffer) >= MAX_BUFFERED_POINTS,
            self._flush_interval,
            heartbeat_interval,
        )
        self._flusher.start()
        exits.register(self._end_at_exit)

    def _end_at_exit(self) -> None:
        """End a run the process left open: failed (killed on Ctrl-C) when the process dies of
        an uncaught exception, else finished, as the ``with`` block would have ended it."""
        if self._ended:
            return
        exc = exits.uncaught()
        if exc is None:
            self.end("finished")
        elif isinstance(exc, KeyboardInterrupt):
            self.end("killed", error="KeyboardInterrupt")
        else:
            self.end("failed", error=f"{type(exc).__name__}: {exc}")

    def _check_active(self) -> None:
        if self._ended:
            raise RunStateError(f"run {self.id} has ended ({self.status}); resume it to log more")

    def _closed_append(self, point: buffer.Point) -> None:
        raise RunStateError(f"run {self.id} has ended ({self.status}); resume it to log more")

    def end(self, status: str = "finished", error: str | None = None) -> None:
        """End the run: flush everything, record ``status``, commit the run branch and, when
        ``finished``, merge it into the branch the run was started on.

        Ending an ended run does nothing.

        Raises:
            InvalidArgumentError: ``status`` is not finished, failed or killed.
            ConflictError: the merge conflicts (the run stays finished on its own branch).
            RunStateError: another session resumed the run meanwhile; this one wrote nothing
                more (the points it still held are dropped).
            StoreError: the final writes failed; the run then stays ``running`` in the lake
                and shows as killed or stale to readers.
        """
        if status not in ("finished", "failed", "killed"):
            raise InvalidArgumentError(f"a run ends finished, failed or killed, not {status!r}")
        if self._ended:
            return
        self._ended = True
        self._append = self._closed_append
        self._replace_append(self._closed_append)
        exits.unregister(self._end_at_exit)
        if self._flusher is not None:
            self._flusher.stop()
        with self._write_lock:
            self.flush()
            self._check_owner()
            self._record.update(status=status, end_time=datetime.now(UTC), error=error)
            # One commit, which writes the final record itself (one durable step on the
            # embedded backend). The record cannot name the commit that holds it, so it keeps
            # output_commit empty and readers take this commit, the run branch's last, in its
            # place (see tracking.views.output_commit). Lakes written before this also hold a
            # second "recorded" commit whose record names it.
            record = {layout.run_file(self.id, layout.RUN_FILE): self._record_bytes()}
            merging = status == "finished" and self._merge and self.branch is not None
            merge_message = f"Merge run {self.id} ({self.name or 'unnamed'})"
            merge_metadata = {"tracking.run_id": self.id, "tracking.event": "merge"}
            merged: Commit | None = None
            if merging:
                # The embedded backend makes the commit and a merge that needs no three-way
                # work one durable step; otherwise the merge below follows.
                merged = self._commit_merging(status, record, merge_message, merge_metadata)
            else:
                self._commit(status, writes=record)
            self._record["output_commit"] = self._head
        if merging and self.branch is not None:
            try:
                if merged is None:
                    merged = self._lake.merge(
                        self._branch.name,
                        into=self.branch,
                        message=merge_message,
                        metadata=merge_metadata,
                    )
                self.merge_commit = merged.id
                if self._after_merge is not None:
                    self._after_merge(merged)
            except NothingToCommitError:
                self.merge_commit = None

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("killed", error="KeyboardInterrupt")
        else:
            self.end("failed", error=f"{exc_type.__name__}: {exc}")


_ARTIFACT_FIELDS = ("name", "kind", "path", "size", "sha256", "checksum")


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes, the very bytes :meth:`store.Branch.write_table` writes for it,
    encoded in memory: the small tables of a run need no spooled temporary file."""
    from store.tables import encode_bytes

    return encode_bytes(table)


def _key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError(f"names must be non-empty strings, got {key!r}")
    return key


class _HashingReader(io.RawIOBase):
    """A binary reader that hashes what passes through it, so a file is read once."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.sha256.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
