"""``Branch``: a handle on one branch, for writing, reading and committing, and transactions.

Transactions are built once, above the backend contract: a private scratch branch, a commit,
and a merge back. Serializable ones also record what they read and pass those paths as the
merge's ``guard`` (see :meth:`store.backend.Backend.merge`), as Delta and Iceberg check a
transaction's read set against the commits that landed since it began.
"""

from __future__ import annotations

import builtins
import io
import itertools
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal, TypeVar

import pyarrow as pa

from store import folders, tables
from store.conflicts import conflicting_paths
from store.errors import (
    ConcurrentUpdateError,
    ConflictError,
    InvalidArgumentError,
    NothingToCommitError,
)
from store.lake import _metadata
from store.model import Change, Commit, ObjectInfo
from store.names import BranchName, validate_path
from store.scratch import new_short_name

if TYPE_CHECKING:
    from store.lake import Lake

T = TypeVar("T")

#: How a transaction meets concurrent commits on its branch (see :meth:`Branch.transact`).
Isolation = Literal["merge", "serializable"]
ISOLATION_LEVELS: tuple[str, ...] = ("merge", "serializable")


class Branch:
    """A branch of a lake. Building one does no I/O; every method goes to the backend.

    Reads see the branch's uncommitted changes. Writes are uncommitted until :meth:`commit`.
    """

    def __init__(self, lake: Lake, name: BranchName, reads: set[str] | None = None) -> None:
        self.lake = lake
        self._name = name
        # The read set of a serializable transaction's handle; None when reads are not tracked.
        self._reads = reads

    def __repr__(self) -> str:
        return f"Branch({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Branch) and other._name == self._name and other.lake is self.lake

    def __hash__(self) -> int:
        return hash(self._name)

    @property
    def name(self) -> str:
        """The full, namespace-qualified name (``user:avery/exp``; production: ``main``)."""
        return str(self._name)

    @property
    def _ref(self) -> str:
        """This branch as an unambiguous ref (a bare production name could mean a same-named
        branch of the current namespace)."""
        return f"{self._name.namespace}/{self._name.short}"

    @property
    def namespace(self) -> str:
        return str(self._name.namespace)

    @property
    def backend_name(self) -> str:
        """The name the backend stores (lakeFS-compatible)."""
        return self._name.backend_name()

    @property
    def _backend(self) -> Any:
        return self.lake.backend

    # -- writing ---------------------------------------------------------------------------------

    def write_bytes(self, path: str, data: bytes) -> ObjectInfo:
        """Write ``data`` at ``path`` (replacing what was there).

        Raises:
            InvalidPathError, InvalidArgumentError (not bytes), BranchNotFoundError,
            ProtectedBranchError.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"write_bytes needs bytes, got {type(data).__name__}")
        return self._put(path, io.BytesIO(bytes(data)))

    def write_file(self, path: str, source: str | os.PathLike[str] | IO[bytes]) -> ObjectInfo:
        """Stream a local file or a binary file object to ``path``; never all in memory.

        Raises:
            LakeFolderError: the local file lies in a lake folder (nothing is read).
            InvalidArgumentError: ``source`` is neither a path nor a binary file object (a text
                stream is refused; nothing is written).
        """
        if isinstance(source, str | os.PathLike):
            own = folders.own_lake_folders(self.lake.location)
            folders.LakeFolders(own).refuse([source], "import")
            with open(source, "rb") as f:
                return self._put(path, f)
        if not hasattr(source, "read"):
            raise InvalidArgumentError("write_file needs a path or a binary file object")
        if isinstance(source, io.TextIOBase):
            # Refused before any byte moves: one backend failed on the first str, another
            # stored it encoded as UTF-8.
            raise InvalidArgumentError(
                f"write_file needs a binary file object (open the file with 'rb'), "
                f"not the text stream {type(source).__name__}"
            )
        return self._put(path, source)  # type: ignore[arg-type]

    def write_table(self, path: str, table: Any, **parquet_options: Any) -> ObjectInfo:
        """Write a ``pyarrow.Table`` or pandas ``DataFrame`` as Parquet."""
        validate_path(path)
        with tables.encode(table, **parquet_options) as encoded:
            return self._put(path, encoded)  # type: ignore[arg-type]

    def _put(self, path: str, source: BinaryIO) -> ObjectInfo:
        info: ObjectInfo = self._backend.put(self.backend_name, validate_path(path), source)
        return info

    def write_many(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Write many small in-memory objects as one batch; returns how many.

        Every path is checked before anything is written, so a bad one leaves the branch
        unchanged.

        Raises:
            InvalidPathError, InvalidArgumentError (not bytes), BranchNotFoundError,
            ProtectedBranchError.
        """
        batch = []
        for path, data in items:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InvalidArgumentError(f"write_many needs bytes, got {type(data).__name__}")
            batch.append((validate_path(path), bytes(data)))
        count: int = self._backend.put_many(self.backend_name, batch)
        return count

    def delete(self, *paths: str) -> None:
        """Delete objects (uncommitted until the next commit).

        Raises:
            ObjectNotFoundError: a path does not exist (nothing is deleted then).
        """
        if not paths:
            raise InvalidArgumentError("delete needs at least one path")
        self._backend.delete(self.backend_name, [validate_path(p) for p in paths])

    def upload_dir(
        self,
        local_dir: str | os.PathLike[str],
        prefix: str = "",
        progress: Callable[[int], None] | None = None,
        *,
        follow_symlinks: bool = False,
    ) -> folders.FolderUpload:
        """Import every file under a local folder below the folder ``prefix``, small files in
        batches (uncommitted until :meth:`commit`).

        Nothing outside ``local_dir`` is read unless ``follow_symlinks``: a symbolic link is
        followed only when its target lies inside the folder. Links leaving it, dangling links,
        link loops and special files (fifos, sockets, devices) are skipped, listed in the
        result's ``skipped`` and announced with a :class:`store.folders.SkippedPathsWarning`.
        With ``follow_symlinks`` every link is followed (loops are still skipped). Lake folders
        met on the way (this lake's, or any holding ``flowlake.json`` and ``refs.db``) are left
        out, as git leaves out ``.git``, and listed in the result's ``lake_folders``.

        Args:
            progress: called with the number of files written after each write or batch.

        Returns:
            How many files and bytes were written, and what was skipped.

        Raises:
            InvalidPathError: a file's name is not a valid lake path (nothing is written).
            NotADirectoryError: ``local_dir`` is not a folder.
            LakeFolderError: ``local_dir`` is a lake folder or lies in one (nothing is written).
            BranchNotFoundError, ProtectedBranchError.
        """
        if prefix:
            validate_path(prefix.rstrip("/"))
        own = folders.own_lake_folders(self.lake.location)
        found = folders.scan(local_dir, follow_symlinks=follow_symlinks, own_lakes=own)
        result = folders.upload(self._backend, self.backend_name, found, prefix, progress)
        if result.skipped:
            shown = "; ".join(f"{s.path}: {s.reason}" for s in result.skipped[:5])
            more = f" and {len(result.skipped) - 5} more" if len(result.skipped) > 5 else ""
            warnings.warn(
                f"upload_dir skipped {len(result.skipped)} path(s): {shown}{more}",
                folders.SkippedPathsWarning,
                stacklevel=2,
            )
        return result

    # -- reading ---------------------------------------------------------------------------------

    # In a serializable transaction every path read through this handle (also one found
    # missing, and every path a listing returned) joins the read set.

    def _note(self, *paths: str) -> None:
        if self._reads is not None:
            self._reads.update(validate_path(p) for p in paths)

    def read_bytes(self, path: str) -> bytes:
        self._note(path)
        return self.lake.read_bytes(path, ref=self._ref)

    def read_table(self, path: str, columns: builtins.list[str] | None = None) -> pa.Table:
        self._note(path)
        return self.lake.read_table(path, ref=self._ref, columns=columns)

    def open(self, path: str) -> BinaryIO:
        self._note(path)
        return self.lake.open(path, ref=self._ref)

    def stat(self, path: str) -> ObjectInfo:
        self._note(path)
        return self.lake.stat(path, ref=self._ref)

    def exists(self, path: str) -> bool:
        self._note(path)
        return self.lake.exists(path, ref=self._ref)

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        found = self.lake.list(ref=self._ref, prefix=prefix)
        self._note(*(info.path for info in found))
        return found

    def download_dir(self, local_dir: str | os.PathLike[str], prefix: str = "") -> int:
        """Export the folder ``prefix`` into ``local_dir``; see :meth:`Lake.download_dir`."""
        if self._reads is not None:
            self.list(folders.folder_prefix(prefix))
        return self.lake.download_dir(local_dir, ref=self._ref, prefix=prefix)

    # -- history ---------------------------------------------------------------------------------

    def head(self) -> Commit:
        """The branch's head commit."""
        return self._backend.get_commit(self._backend.branch_head(self.backend_name))  # type: ignore[no-any-return]

    def log(self, limit: int | None = None) -> builtins.list[Commit]:
        return self.lake.log(self._ref, limit=limit)

    def uncommitted(self) -> builtins.list[Change]:
        """Uncommitted changes against the head, sorted by path."""
        return list(self._backend.uncommitted(self.backend_name))

    def reset(self) -> None:
        """Drop every uncommitted change."""
        self._backend.reset(self.backend_name)

    def commit(
        self,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        writes: Mapping[str, bytes] | None = None,
    ) -> Commit:
        """Commit the uncommitted changes. Once this returns the commit is durable.

        Args:
            writes: path -> bytes to write (as :meth:`write_many` does) and commit with the
                rest; the embedded backend stores them and commits in one durable step (a crash
                leaves the commit with them, or neither and the branch as it was).

        Raises:
            NothingToCommitError, ProtectedBranchError, BranchNotFoundError.
            InvalidPathError, InvalidArgumentError (not bytes): a bad entry in ``writes``
                (nothing is written).
        """
        if not isinstance(message, str) or not message.strip():
            raise InvalidArgumentError("commit message must be a non-empty string")
        if writes:
            items = _write_items(writes)
            written: Commit = self._backend.commit_writes(
                self.backend_name, items, message, _metadata(metadata), self.lake.user
            )
            return written
        commit: Commit = self._backend.commit(
            self.backend_name, message, _metadata(metadata), self.lake.user
        )
        return commit

    def commit_merging(
        self,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        writes: Mapping[str, bytes],
        into: str,
        merge_message: str | None = None,
        merge_metadata: dict[str, Any] | None = None,
    ) -> tuple[Commit, Commit | None]:
        """:meth:`commit` with ``writes``, and in the same durable step the merge of the new
        commit into branch ``into`` when that merge needs no three-way work (``into`` is clean,
        has not moved since this branch left it, and no strategy or gate applies: not
        ``main``, whose merges pass the policy's gates).

        Returns:
            (the commit, the merge commit): the merge commit is what :meth:`Lake.merge` of this
            branch into ``into`` would have made, both heads moved in one step (a crash leaves
            both commits or neither). None when the merge was not made here: the caller
            merges with :meth:`Lake.merge`, which merges three ways or says why it cannot.
            Backends without a combined step (lakeFS) always return None.

        Raises:
            As :meth:`commit` (nothing is committed or merged). BranchNotFoundError: no branch
            ``into``.
        """
        if not isinstance(message, str) or not message.strip():
            raise InvalidArgumentError("commit message must be a non-empty string")
        items = _write_items(writes)
        dest = self.lake._branch_backend_name(into)
        merged: tuple[Commit, Commit | None] = self._backend.commit_writes_merged(
            self.backend_name,
            items,
            message,
            _metadata(metadata),
            self.lake.user,
            dest,
            merge_message or f"Merge {self.name} into {into}",
            _metadata(merge_metadata),
        )
        return merged

    @contextmanager
    def transact(
        self,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        isolation: Isolation = "merge",
    ) -> Iterator[Branch]:
        """Work on a private scratch branch made from this branch's head; on a clean exit commit
        it and merge it here as one commit; on an exception change nothing.

        Either way the scratch branch is deleted. Reads and writes must go through the handle
        this yields. A transaction that writes nothing commits nothing. The scratch branch's
        name records this process (see :mod:`store.scratch`): listings and tracking views leave
        it out, and if the process is killed mid-transaction ``flowlake gc`` deletes it once the
        process is provably gone.

        What each ``isolation`` promises, beyond all-or-nothing:

        * ``"merge"`` (default): the transaction's changes are three-way merged onto whatever
          the branch holds when it ends. It fails with ConflictError only when a commit that
          landed meanwhile changed one of its paths to *different* contents. Reads are not
          checked, so two transactions that read a counter at 0 and both write 1 both succeed
          (one increment is lost), and a decision made on a value another commit has since
          changed still lands. Use it for independent writes.
        * ``"serializable"``: also fails with ConflictError when any path read through the
          handle (including one found missing, and each path a listing returned) changed on
          this branch since the transaction began, even to the value the transaction wrote.
          Committed transactions then behave as if run one after another. Retry a failure, or
          use :meth:`run_transaction`, which does. Not guarded: objects a listing did not
          return that appear under its prefix.

        Raises:
            ConflictError: as above; ``conflicts`` lists the paths. Nothing is changed.
            InvalidArgumentError: a bad message or isolation.
            DirtyBranchError: this branch has uncommitted changes at the end.
            BranchNotFoundError, ProtectedBranchError.
        """
        if isolation not in ISOLATION_LEVELS:
            raise InvalidArgumentError(
                f"unknown isolation {isolation!r}; use one of {', '.join(ISOLATION_LEVELS)}"
            )
        if not isinstance(message, str) or not message.strip():
            raise InvalidArgumentError("commit message must be a non-empty string")
        _metadata(metadata)  # refused before any work, not at the commit after it
        scratch_short = new_short_name(self._name.short)
        made = self.lake.branch(f"{self._name.namespace}/{scratch_short}", source=self._ref)
        scratch = Branch(self.lake, made._name, set() if isolation == "serializable" else None)
        try:
            yield scratch
            try:
                scratch.commit(message, metadata)
            except NothingToCommitError:
                return
            if scratch._reads is None:
                self.lake.merge(scratch._ref, into=self._ref, message=message, metadata=metadata)
            else:
                self._merge_guarded(scratch, scratch._reads, message, metadata)
        finally:
            self.lake.delete_branch(scratch._ref)

    def _merge_guarded(
        self, scratch: Branch, reads: set[str], message: str, metadata: dict[str, Any] | None
    ) -> None:
        """Merge a serializable transaction's scratch branch here, guarding its read set."""
        done = scratch.head()
        began = done.parents[0]
        try:
            self._backend.merge(
                scratch.backend_name,
                self.backend_name,
                None,
                message,
                _metadata(metadata),
                self.lake.user,
                guard=sorted(reads),
            )
        except ConflictError as exc:
            head = self._backend.branch_head(self.backend_name)
            moved = {c.path for c in self._backend.diff(began, head)} & reads
            clashes = conflicting_paths(self._backend, done.id, head)
            paths = sorted({*exc.conflicts, *moved, *clashes})
            raise ConflictError(
                f"transaction on {self.name} conflicts with commits made since it began", paths
            ) from None

    def run_transaction(
        self,
        fn: Callable[[Branch], T],
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        retries: int = 5,
    ) -> T:
        """Run ``fn(tx)`` in a serializable :meth:`transact`; when it conflicts, run it again on
        the branch's new head, up to ``retries`` more times, with a short random backoff.

        ``fn`` may run several times; only the writes of the run that commits are kept, so it
        must act on the lake through ``tx`` only. An exception from ``fn`` is not retried.

        Returns:
            What ``fn`` returned on the run that committed.

        Raises:
            ConflictError: still conflicting after ``retries`` retries.
            InvalidArgumentError: ``retries`` is not a non-negative int.
        """
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidArgumentError(f"retries must be an int >= 0, got {retries!r}")
        for attempt in itertools.count():
            try:
                with self.transact(message, metadata, isolation="serializable") as tx:
                    result = fn(tx)
                return result
            except (ConflictError, ConcurrentUpdateError):
                if attempt >= retries:
                    raise
            time.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _write_items(writes: Mapping[str, bytes]) -> list[tuple[str, bytes]]:
    """A commit's ``writes`` as checked (path, bytes) items.

    Raises:
        InvalidPathError, InvalidArgumentError (not bytes).
    """
    items = []
    for path, data in writes.items():
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"commit writes need bytes, got {type(data).__name__}")
        items.append((validate_path(path), bytes(data)))
    return items
