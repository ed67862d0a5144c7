"""``Lake``: the public handle on one lake, seen from one namespace.

Everything both backends need above the versioning contract lives here or in the modules it
uses, once: namespaces, user-facing names, ``ref~N``, validation, conflict listings, tables,
folders and transactions.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import pyarrow as pa

from store import folders, tables
from store.backend import CAP_FSCK, CAP_GC, Backend
from store.conflicts import conflicting_paths
from store.errors import (
    ConflictError,
    InvalidArgumentError,
    InvalidNameError,
    ObjectNotFoundError,
    RefNotFoundError,
    UnsupportedOperationError,
)
from store.errorview import UserFacingBackend
from store.model import (
    MERGE_STRATEGIES,
    RESERVED_METADATA_PREFIXES,
    BranchInfo,
    Change,
    Commit,
    MergeStrategy,
    ObjectInfo,
)
from store.names import (
    BranchName,
    Namespace,
    check_new_branch_name,
    check_new_tag_name,
    listed_names,
    parse_branch,
    parse_branch_ref,
    validate_path,
    validate_prefix,
    validate_tag,
)
from store.refs import (
    RefSpec,
    Target,
    find_branch,
    refuse_branch_clashes,
    refuse_tag_clashes,
    resolve_base,
)
from store.scratch import ScratchBranch, is_scratch, reclaim

if TYPE_CHECKING:
    from store.branch import Branch


class Lake:
    """A lake seen from ``namespace``. Build it with :func:`store.open`.

    Branch names given to its methods are ``<namespace>/<branch>`` or bare ``<branch>``: a bare
    name means the production branch of that name if there is one, else the current
    namespace's. Refs are looked up in the order documented in :mod:`store.refs`.
    """

    def __init__(self, backend: Backend, namespace: Namespace, user: str, location: str) -> None:
        view = backend if isinstance(backend, UserFacingBackend) else UserFacingBackend(backend)
        self.backend: Backend = cast(Backend, view)
        self._namespace = namespace
        self.user = user
        self.location = location

    def __repr__(self) -> str:
        return f"Lake({self.location!r}, namespace={str(self._namespace)!r})"

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend's connections and files."""
        self.backend.close()

    @property
    def namespace(self) -> str:
        """The namespace this handle works in: ``user:<login>``, ``team:<name>``, ``production``."""
        return str(self._namespace)

    def with_namespace(self, namespace: str) -> Lake:
        """The same lake seen from another namespace (shares the backend).

        Raises:
            InvalidNameError: not a namespace.
        """
        return Lake(self.backend, Namespace.parse(namespace), self.user, self.location)

    # -- names -----------------------------------------------------------------------------------

    def _branch_name(self, name: str) -> BranchName:
        """The existing branch ``name`` refers to (production first, then the current namespace).

        Raises:
            InvalidNameError, BranchNotFoundError.
        """
        return find_branch(self.backend, self._namespace, name)[0]

    def _branch_backend_name(self, name: str) -> str:
        return self._branch_name(name).backend_name()

    def resolve(self, ref: str) -> str:
        """The commit id a ref names: a branch, tag, commit id or unique prefix, with ``~N``.

        Names are looked up in the order documented in :mod:`store.refs`.

        Raises:
            InvalidNameError: the ref is malformed.
            RefNotFoundError: nothing of that name, or fewer than N ancestors.
            AmbiguousRefError: a prefix matches several commits.
        """
        return self._target(ref).commit

    def _target(self, ref: str) -> Target:
        spec = RefSpec.parse(ref)
        target = resolve_base(self.backend, self._namespace, spec.base)
        if spec.back == 0:
            return target
        commit_id = target.commit
        for _ in range(spec.back):
            parents = self.backend.get_commit(commit_id).parents
            if not parents:
                raise RefNotFoundError(f"{ref!r} goes back further than the history")
            commit_id = parents[0]
        return Target(commit_id)

    def _read_ref(self, ref: str) -> str:
        """What the backend reads for ``ref``: a branch's backend name (uncommitted changes
        visible) when the ref names a branch, else a commit id."""
        target = self._target(ref)
        return target.branch.backend_name() if target.branch is not None else target.commit

    @contextmanager
    def _reading(self, ref: str) -> Iterator[str]:
        """The backend ref to read ``ref`` at, for the ``with`` block.

        A namespace-qualified branch name is used as it is, with no lookup first (one round trip
        less on every read through a :class:`Branch`); when the read then finds nothing, the
        branch's existence is checked so that a missing branch raises BranchNotFoundError
        rather than a missing object.
        """
        spec = RefSpec.parse(ref)
        qualified = None
        if spec.back == 0 and "/" in spec.base:
            with contextlib.suppress(InvalidNameError):
                qualified = parse_branch_ref(spec.base, self._namespace).backend_name()
        if qualified is None:
            yield self._read_ref(ref)
            return
        try:
            yield qualified
        except (ObjectNotFoundError, RefNotFoundError):
            self.backend.branch_head(qualified)
            raise

    # -- branches --------------------------------------------------------------------------------

    def branch(
        self,
        name: str,
        source: str = "main",
        exist_ok: bool = False,
        *,
        writes: Sequence[tuple[str, bytes]] = (),
    ) -> Branch:
        """Create branch ``name`` (in the current namespace unless qualified) at ``source``.

        Creation is O(1): the branch shares its source's tree. Names that would make a ref
        ambiguous are refused (see :mod:`store.refs`): ones that look like a commit id, a
        namespace branch named like a production branch and the reverse, and a tag's name.

        Args:
            writes: (path, bytes) to stage on the new branch as :meth:`Branch.write_many`
                does, in the same step (embedded: one transaction creates the branch and stages
                them, so a crash leaves both or neither). With ``exist_ok`` and an existing
                branch they are written to it.

        Raises:
            InvalidNameError: bad name or namespace.
            AmbiguousNameError: the name would make a ref ambiguous (also with ``exist_ok``).
            AlreadyExistsError: the branch exists (unless ``exist_ok``).
            RefNotFoundError: ``source`` does not resolve.
        """
        from store.branch import Branch
        from store.errors import AlreadyExistsError

        target = parse_branch(name, self._namespace)
        check_new_branch_name(target.short)
        commit_id = self.resolve(source)
        refuse_branch_clashes(self.backend, target)
        items = []
        for path, data in writes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InvalidArgumentError(f"branch writes need bytes, got {type(data).__name__}")
            items.append((validate_path(path), bytes(data)))
        try:
            if items:
                self.backend.create_branch_with(target.backend_name(), commit_id, items)
            else:
                self.backend.create_branch(target.backend_name(), commit_id)
        except AlreadyExistsError:
            if not exist_ok:
                raise
            if items:
                self.backend.put_many(target.backend_name(), items)
        return Branch(self, target)

    def get_branch(self, name: str) -> Branch:
        """A handle on an existing branch.

        Raises:
            BranchNotFoundError, InvalidNameError.
        """
        from store.branch import Branch

        return Branch(self, self._branch_name(name))

    def branches(
        self, all_namespaces: bool = False, *, include_scratch: bool = False
    ) -> list[BranchInfo]:
        """Branches of the current namespace and production (every namespace on request).

        Transaction scratch branches (see :mod:`store.scratch`; one is left behind when a
        process is killed mid-transaction) are left out unless ``include_scratch``.
        """
        protected = self.backend.protected_branches()
        out = []
        shown = {str(self._namespace), "production"}
        for backend_name, head in self.backend.list_branches().items():
            full, namespace = listed_names(backend_name)
            if not include_scratch and is_scratch(full):
                continue
            if all_namespaces or namespace in shown:
                out.append(BranchInfo(full, namespace, head, backend_name in protected))
        return sorted(out, key=lambda b: (b.namespace != "production", b.namespace, b.name))

    def delete_branch(self, name: str) -> None:
        """Delete a branch and its uncommitted changes.

        Raises:
            BranchNotFoundError, ProtectedBranchError.
        """
        self.backend.delete_branch(self._branch_backend_name(name))

    # -- tags --------------------------------------------------------------------------------

    def tag(self, name: str, ref: str) -> Commit:
        """Tag the commit ``ref`` resolves to. Tags are global and never move.

        Raises:
            InvalidNameError: bad name, or it holds ``__``.
            AmbiguousNameError: the name looks like a commit id, or a branch of any namespace
                has it (see :mod:`store.refs`).
            AlreadyExistsError, RefNotFoundError.
        """
        check_new_tag_name(name)
        commit_id = self.resolve(ref)
        refuse_tag_clashes(self.backend, name)
        self.backend.create_tag(name, commit_id)
        return self.backend.get_commit(commit_id)

    def tags(self) -> dict[str, str]:
        """Every tag, as name -> commit id."""
        return self.backend.list_tags()

    def delete_tag(self, name: str) -> None:
        """Raises: RefNotFoundError when no such tag."""
        self.backend.delete_tag(validate_tag(name))

    # -- history ---------------------------------------------------------------------------------

    def commit(self, ref: str) -> Commit:
        """The commit a ref resolves to."""
        return self.backend.get_commit(self.resolve(ref))

    def log(self, ref: str = "main", limit: int | None = None) -> list[Commit]:
        """Commits reachable from ``ref``, newest first.

        Args:
            ref: where to start.
            limit: at most this many commits (an int >= 1), or None for all.

        Raises:
            InvalidArgumentError: ``limit`` is not None or an int >= 1 (a bool is refused).
            RefNotFoundError: nothing answers to ``ref``.
        """
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise InvalidArgumentError(f"limit must be None or an int >= 1, not {limit!r}")
        out: list[Commit] = []
        for commit in self.backend.log(self.resolve(ref)):
            if limit is not None and len(out) >= limit:
                break
            out.append(commit)
        return out

    def diff(self, left: str, right: str) -> list[Change]:
        """Committed changes that turn ``left`` into ``right`` (uncommitted ones: see
        :meth:`Branch.uncommitted`)."""
        return list(self.backend.diff(self.resolve(left), self.resolve(right)))

    def merge_base(self, left: str, right: str) -> str | None:
        """The best common ancestor of two refs, or None."""
        return self.backend.merge_base(self.resolve(left), self.resolve(right))

    def merge(
        self,
        source: str,
        into: str = "main",
        strategy: MergeStrategy | None = None,
        message: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Commit:
        """Three-way merge ``source`` (a branch or commit) into branch ``into``.

        Args:
            strategy: None fails on any conflict; ``"source-wins"`` or ``"dest-wins"`` resolve
                conflicting paths to that side.

        Raises:
            ConflictError: conflicts and no strategy; ``conflicts`` lists the paths. Nothing
                changes.
            InvalidArgumentError: merging a branch into itself, or a bad strategy.
            DirtyBranchError: ``into`` has uncommitted changes.
            NothingToCommitError: ``source`` has nothing ``into`` lacks.
        """
        if strategy is not None and strategy not in MERGE_STRATEGIES:
            raise InvalidArgumentError(
                f"unknown merge strategy {strategy!r}; use None, 'source-wins' or 'dest-wins'"
            )
        dest = self._branch_name(into)
        msg = message or f"Merge {source} into {dest}"
        try:
            with self._reading(source) as source_ref:
                if source_ref == dest.backend_name():
                    raise InvalidArgumentError(f"cannot merge branch {into!r} into itself")
                return self.backend.merge(
                    source_ref, dest.backend_name(), strategy, msg, _metadata(metadata), self.user
                )
        except ConflictError as exc:
            # Worded here, once: a backend that lists the paths itself says less.
            paths = exc.conflicts or conflicting_paths(
                self.backend, self.resolve(source), self.backend.branch_head(dest.backend_name())
            )
            raise ConflictError(f"merging {source} into {dest} conflicts", paths) from None

    def revert(self, branch: str, commit: str) -> Commit:
        """Add a commit to ``branch`` undoing what ``commit`` changed.

        Raises:
            ConflictError, DirtyBranchError, RefNotFoundError.
        """
        target = self._branch_backend_name(branch)
        commit_id = self.resolve(commit)
        try:
            return self.backend.revert(target, commit_id, self.user)
        except ConflictError as exc:
            parent = self.backend.get_commit(commit_id).parents[:1]
            paths = exc.conflicts or conflicting_paths(
                self.backend,
                parent[0] if parent else None,
                self.backend.branch_head(target),
                base=commit_id,
            )
            raise ConflictError(f"reverting {commit} on {branch} conflicts", paths) from None

    # -- reading ---------------------------------------------------------------------------------

    def stat(self, path: str, ref: str = "main") -> ObjectInfo:
        """Raises: ObjectNotFoundError, RefNotFoundError, InvalidPathError."""
        with self._reading(ref) as target:
            return self.backend.stat(target, validate_path(path))

    def exists(self, path: str, ref: str = "main") -> bool:
        try:
            self.stat(path, ref)
            return True
        except ObjectNotFoundError:
            return False

    def open(self, path: str, ref: str = "main") -> BinaryIO:
        """A stream of the object's bytes, verified against its hash as it is read.

        Raises:
            ObjectNotFoundError, RefNotFoundError, InvalidPathError, CorruptObjectError.
        """
        with self._reading(ref) as target:
            return self.backend.open_read(target, validate_path(path))

    def read_bytes(self, path: str, ref: str = "main") -> bytes:
        with self.open(path, ref) as stream:
            return stream.read()

    def read_many(self, paths: Sequence[str], ref: str = "main") -> dict[str, bytes]:
        """The whole bytes of several objects at one ref, each verified against its hash as
        :meth:`read_bytes` verifies.

        Backends that read over a network overlap the reads: on lakeFS, whose API has no
        multi-object read, the GET requests of a batch run concurrently over one pooled set of
        connections (up to 8 in flight), so a batch waits about ``ceil(len(paths) / 8)`` round
        trips rather than ``len(paths)``; it still sends one request per object. The embedded
        backend reads its local files one after another.

        Args:
            paths: object paths (duplicates are read once).
            ref: branch, tag, commit id or ``ref~N``.

        Returns:
            path -> bytes, one entry per distinct path (an empty dict for no paths).

        Raises:
            InvalidPathError: a path is malformed (checked before anything is read).
            ObjectNotFoundError: one of the objects does not exist at ``ref`` (the message names
                it); nothing is returned.
            RefNotFoundError, CorruptObjectError.
        """
        wanted = list(dict.fromkeys(validate_path(p) for p in paths))
        if not wanted:
            return {}
        with self._reading(ref) as target:
            return self.backend.read_many(target, wanted)  # type: ignore[no-any-return]

    def read_table(
        self, path: str, ref: str = "main", columns: list[str] | None = None
    ) -> pa.Table:
        """Read a Parquet table.

        Raises:
            InvalidTableError: the object is not a complete Parquet file.
            ObjectNotFoundError, RefNotFoundError, InvalidPathError, CorruptObjectError.
        """
        return tables.decode(self.read_bytes(path, ref), path, columns)

    def list(self, ref: str = "main", prefix: str = "") -> builtins.list[ObjectInfo]:
        """Objects under ``prefix`` at ``ref``, sorted by path."""
        with self._reading(ref) as target:
            return list(self.backend.list_objects(target, validate_prefix(prefix)))

    def locate(self, path: str, ref: str = "main") -> str | None:
        """A path or URL DuckDB / pyarrow can read in place, or None when the backend has none.

        Raises:
            ObjectNotFoundError: no object at ``path`` (on every backend).
            RefNotFoundError, InvalidPathError.
        """
        with self._reading(ref) as target:
            return self.backend.local_path(target, validate_path(path))

    def download_dir(
        self,
        local_dir: str | os.PathLike[str],
        ref: str = "main",
        prefix: str = "",
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Export the objects in the folder ``prefix`` at ``ref`` into a local folder; returns
        the count. ``"data"`` is the folder ``data/`` (never ``data2/``); see
        :func:`store.folders.export` for what is checked before anything is written. A
        destination in a lake folder (this lake's, or any other one:
        :func:`store.folders.is_lake_folder`) is refused before anything is written.

        Raises:
            LakeFolderError: the export would write into a lake folder.
            PathClashError, InvalidPathError, CorruptObjectError, RefNotFoundError, OSError.
        """
        own = folders.own_lake_folders(self.location)
        with self._reading(ref) as target:
            folder = folders.folder_prefix(validate_prefix(prefix))
            entries = self.backend.list_objects(target, folder)
            return folders.export(
                self.backend, target, entries, prefix, local_dir, progress, own_lakes=own
            )

    # -- maintenance -----------------------------------------------------------------------------

    def fsck(self) -> builtins.list[str]:
        """Check every object's integrity; returns problems (empty when healthy)."""
        if CAP_FSCK not in self.backend.capabilities:
            raise UnsupportedOperationError("this backend checks itself; fsck is embedded-only")
        return self.backend.fsck()

    def gc(
        self, retention: timedelta = timedelta(hours=6), *, exclusive_objects: bool = False
    ) -> int:
        """Remove data unreachable from any ref or uncommitted change, older than ``retention``,
        then the scratch branches of dead transactions older than it
        (:meth:`reclaim_transactions`).

        Safe beside live writers at any retention (embedded: gc and writers share a lock);
        ``retention`` is a grace period for unreachable data. ``exclusive_objects=True`` says
        that no other lake keeps objects at this lake's external object location (``s3://``
        or a folder outside the lake); without it gc refuses to run there.

        Returns:
            How many objects were removed.

        Args:
            retention: a non-negative :class:`datetime.timedelta` (a number is refused, never
                taken as seconds).
            exclusive_objects: see above.

        Raises:
            InvalidArgumentError: ``retention`` is not a timedelta, or is negative.
            SharedObjectsError: the objects are external and ``exclusive_objects`` is false.
        """
        if not isinstance(retention, timedelta):
            raise InvalidArgumentError(
                f"retention must be a datetime.timedelta (e.g. timedelta(hours=6)), "
                f"not {type(retention).__name__} {retention!r}"
            )
        if CAP_GC not in self.backend.capabilities:
            raise UnsupportedOperationError("this backend collects garbage server-side")
        if retention < timedelta(0):
            raise InvalidArgumentError("retention must not be negative")
        removed = self.backend.gc(retention, exclusive_objects=exclusive_objects)
        # After the objects, so that a refused gc changes nothing; what the reclaimed branches
        # alone held goes at the next gc.
        self.reclaim_transactions(retention)
        return removed

    def reclaim_transactions(
        self, grace: timedelta = timedelta(hours=6)
    ) -> builtins.list[ScratchBranch]:
        """Delete the scratch branches of transactions whose process is provably gone, made
        more than ``grace`` ago, in every namespace (on every backend; :meth:`gc` does it too).

        Provably gone: the process ran on this host and the host rebooted since, or its process
        id is free or taken by a later process (see :func:`store.scratch.abandoned`). A live
        transaction's scratch branch, one made on another host, and one this user may not
        delete are kept.

        Returns:
            The scratch branches deleted, sorted by name.

        Raises:
            InvalidArgumentError: ``grace`` is negative.
        """
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise InvalidArgumentError("grace must be a non-negative timedelta")
        return reclaim(self, grace)


def _metadata(metadata: dict[str, Any] | None) -> dict[str, str]:
    """Commit metadata as stored: string keys, values as ``str``.

    Raises:
        InvalidArgumentError: not a dict with string keys, or a key uses a reserved prefix
            (:data:`store.model.RESERVED_METADATA_PREFIXES`, on every backend).
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidArgumentError("metadata must be a dict with string keys")
    reserved = sorted(k for k in metadata if k.startswith(RESERVED_METADATA_PREFIXES))
    if reserved:
        raise InvalidArgumentError(
            f"commit metadata keys {reserved} use a reserved prefix {RESERVED_METADATA_PREFIXES}"
        )
    return {k: str(v) for k, v in metadata.items()}
