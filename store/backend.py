"""The versioning backend contract.

A backend versions objects under *backend branch names* (see :mod:`store.names`) and commit ids.
It knows nothing of namespaces, user-facing names, ``ref~N``, tables or conflict listings: those
live above it, once, in :mod:`store.lake` and :mod:`store.branch`.

Wherever a method takes ``ref``, that is either a backend branch name (reads then see the
branch's uncommitted changes) or a full commit id (reads see exactly that commit).
"""

from __future__ import annotations

import abc
import io
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import BinaryIO

from store.model import Change, Commit, MergeStrategy, ObjectInfo

#: Capabilities a backend may declare in :attr:`Backend.capabilities`.
CAP_FSCK = "fsck"
CAP_GC = "gc"
CAP_LOCAL_PATHS = "local-paths"


class Backend(abc.ABC):
    """What every versioning backend implements. All methods may raise
    :class:`store.errors.BackendUnavailableError` when the backend cannot be reached."""

    #: Optional capabilities (``CAP_*``) this backend offers.
    capabilities: frozenset[str] = frozenset()

    #: The name of the branch every lake starts with.
    default_branch: str = "main"

    # -- refs -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def create_branch(self, name: str, source_commit: str) -> None:
        """Create branch ``name`` whose head is ``source_commit``. O(1) in the lake's size.

        Raises:
            AlreadyExistsError: the branch exists.
            RefNotFoundError: ``source_commit`` is not a commit.
        """

    def create_branch_with(
        self, name: str, source_commit: str, items: Sequence[tuple[str, bytes]]
    ) -> None:
        """:meth:`create_branch`, with ``items`` staged on it as :meth:`put_many` stages them.

        The default creates the branch, then stages; a backend that can do both in one durable
        step overrides it (a crash then leaves the branch with its items, or no branch).

        Raises:
            AlreadyExistsError, RefNotFoundError: as :meth:`create_branch` (nothing written).
        """
        self.create_branch(name, source_commit)
        if items:
            self.put_many(name, items)

    @abc.abstractmethod
    def delete_branch(self, name: str) -> None:
        """Delete a branch and its uncommitted changes. Commits stay reachable from other refs.

        Raises:
            BranchNotFoundError: no such branch.
            ProtectedBranchError: the branch is protected.
        """

    @abc.abstractmethod
    def list_branches(self) -> dict[str, str]:
        """Every branch, as backend name -> head commit id."""

    @abc.abstractmethod
    def branch_head(self, name: str) -> str:
        """The head commit id of a branch.

        Raises:
            BranchNotFoundError: no such branch.
        """

    @abc.abstractmethod
    def protect_branch(self, name: str) -> None:
        """Protect a branch: from now on only merges and reverts may change it.

        Raises:
            BranchNotFoundError: no such branch.
        """

    @abc.abstractmethod
    def protected_branches(self) -> set[str]:
        """The backend names of the protected branches."""

    @abc.abstractmethod
    def create_tag(self, name: str, commit_id: str) -> None:
        """Point tag ``name`` at ``commit_id``. Tags never move.

        Raises:
            AlreadyExistsError: the tag exists.
            RefNotFoundError: the commit does not exist.
        """

    @abc.abstractmethod
    def delete_tag(self, name: str) -> None:
        """Delete a tag.

        Raises:
            RefNotFoundError: no such tag.
        """

    @abc.abstractmethod
    def list_tags(self) -> dict[str, str]:
        """Every tag, as name -> commit id."""

    @abc.abstractmethod
    def resolve(self, ref: str) -> str:
        """Resolve a branch name, tag, full commit id or unique commit id prefix to a commit id.

        Raises:
            RefNotFoundError: nothing of that name.
            AmbiguousRefError: a prefix matches several commits.
        """

    @abc.abstractmethod
    def get_commit(self, commit_id: str) -> Commit:
        """The commit with that full id.

        Raises:
            RefNotFoundError: no such commit.
        """

    @abc.abstractmethod
    def log(self, commit_id: str) -> Iterator[Commit]:
        """``commit_id`` and all its ancestors, newest first (ties broken by id), each once."""

    @abc.abstractmethod
    def merge_base(self, left: str, right: str) -> str | None:
        """The best common ancestor of two commits, or None when they share no history."""

    # -- objects --------------------------------------------------------------------------------

    @abc.abstractmethod
    def stat(self, ref: str, path: str) -> ObjectInfo:
        """Information on one object.

        Raises:
            ObjectNotFoundError: no object at ``path`` in ``ref``.
            RefNotFoundError: the ref does not exist.
        """

    @abc.abstractmethod
    def open_read(self, ref: str, path: str) -> BinaryIO:
        """A binary stream of the object's bytes. Streams verify integrity where the backend can.

        Raises:
            ObjectNotFoundError: no object at ``path`` in ``ref``.
            CorruptObjectError: stored bytes do not match their hash (possibly on the last read).
        """

    def read_many(self, ref: str, paths: Sequence[str]) -> dict[str, bytes]:
        """The whole bytes of several objects at one ref, each verified like :meth:`open_read`.

        The default reads the paths one after another; a backend where each read is a network
        round trip overrides it to overlap them. All or nothing: the first failure raises and
        no bytes are returned.

        Returns:
            path -> bytes, one entry per distinct path (an empty dict for no paths).

        Raises:
            ObjectNotFoundError: no object at one of ``paths`` in ``ref`` (its path named).
            CorruptObjectError: an object's stored bytes do not match their hash.
        """
        out: dict[str, bytes] = {}
        for path in paths:
            if path not in out:
                with self.open_read(ref, path) as stream:
                    out[path] = stream.read()
        return out

    @abc.abstractmethod
    def list_objects(self, ref: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose path starts with ``prefix``, sorted by path."""

    @abc.abstractmethod
    def put(self, branch: str, path: str, source: BinaryIO) -> ObjectInfo:
        """Write an object on a branch from a stream, without holding it all in memory.

        The object is visible on the branch once this returns; a crash before that leaves the
        branch as it was.

        Raises:
            BranchNotFoundError, ProtectedBranchError.
        """

    @abc.abstractmethod
    def put_many(self, branch: str, items: Iterable[tuple[str, bytes]]) -> int:
        """Write many small objects at once (as one batch where the backend can). Returns how many.

        Raises:
            BranchNotFoundError, ProtectedBranchError.
        """

    @abc.abstractmethod
    def delete(self, branch: str, paths: Iterable[str]) -> None:
        """Delete objects on a branch (uncommitted until the next commit).

        Raises:
            ObjectNotFoundError: one of the paths does not exist (nothing is deleted then).
            BranchNotFoundError, ProtectedBranchError.
        """

    @abc.abstractmethod
    def uncommitted(self, branch: str) -> Iterator[Change]:
        """The branch's uncommitted changes against its head, sorted by path."""

    @abc.abstractmethod
    def reset(self, branch: str) -> None:
        """Drop every uncommitted change of the branch."""

    @abc.abstractmethod
    def commit(self, branch: str, message: str, metadata: dict[str, str], committer: str) -> Commit:
        """Commit the branch's uncommitted changes. Acknowledged commits are durable.

        Raises:
            NothingToCommitError: no uncommitted changes.
            BranchNotFoundError, ProtectedBranchError.
        """

    def commit_writes(
        self,
        branch: str,
        items: Sequence[tuple[str, bytes]],
        message: str,
        metadata: dict[str, str],
        committer: str,
    ) -> Commit:
        """Write ``items`` as :meth:`put_many` does, then commit them with the branch's other
        uncommitted changes.

        The default stages the items, then commits; a backend that can do both in one durable
        step overrides it (a crash then leaves either the commit with the items or neither).

        Raises:
            NothingToCommitError: nothing (items included) changes the branch's head.
            BranchNotFoundError, ProtectedBranchError.
        """
        if len(items) == 1:
            # One object through put: put_many may use threads, which cannot start once the
            # interpreter is exiting (a run left open ends from an atexit hook).
            ((path, data),) = items
            self.put(branch, path, io.BytesIO(data))
        else:
            self.put_many(branch, items)
        return self.commit(branch, message, metadata, committer)

    def commit_writes_merged(
        self,
        branch: str,
        items: Sequence[tuple[str, bytes]],
        message: str,
        metadata: dict[str, str],
        committer: str,
        dest_branch: str,
        merge_message: str,
        merge_metadata: dict[str, str],
    ) -> tuple[Commit, Commit | None]:
        """:meth:`commit_writes`, and in the same durable step, when that needs no three-way
        work, the merge of the new commit into ``dest_branch``.

        The merge is made only when :meth:`merge` with no strategy and no guard would make it
        with the source's tree: ``dest_branch`` is clean and has not moved since the merge base,
        and the new commit differs from it in contents only. Then both heads move together (a
        crash leaves both commits or neither) and the merge commit is returned; otherwise only
        the commit is made and the second element is None: merge then as usual
        (:meth:`store.Lake.merge`, which also reports conflicts and the reasons it cannot).
        The default never merges.

        Raises:
            NothingToCommitError, BranchNotFoundError, ProtectedBranchError: as
                :meth:`commit_writes` (nothing is committed or merged).
        """
        return self.commit_writes(branch, items, message, metadata, committer), None

    @abc.abstractmethod
    def diff(self, left: str, right: str) -> Iterator[Change]:
        """Changes that turn commit ``left`` into commit ``right``, sorted by path."""

    @abc.abstractmethod
    def merge(
        self,
        source: str,
        dest_branch: str,
        strategy: MergeStrategy | None,
        message: str,
        metadata: dict[str, str],
        committer: str,
        guard: Collection[str] = (),
    ) -> Commit:
        """Three-way merge of ``source`` (branch or commit) into ``dest_branch`` as a new commit.

        Without a strategy any conflict fails the merge and changes nothing.

        ``guard`` (optimistic concurrency for read-modify-write): paths that must not have
        changed on ``dest_branch`` since the merge base. A guarded path that ``dest_branch``
        added, removed or gave other contents, even the very contents ``source`` gives it,
        fails the merge with ConflictError. The check is atomic with the merge for every
        guarded path that exists in ``source``; one absent from ``source`` may be checked just
        before the merge instead (lakeFS).

        Raises:
            ConflictError: both sides changed a path differently, or ``dest_branch`` changed a
                guarded path (``conflicts`` may be empty: the layer above fills it in).
            DirtyBranchError: ``dest_branch`` has uncommitted changes.
            NothingToCommitError: ``source`` brings no changes.
        """

    @abc.abstractmethod
    def revert(self, branch: str, commit_id: str, committer: str) -> Commit:
        """Add a commit to ``branch`` undoing the changes ``commit_id`` made to its first parent.

        Raises:
            ConflictError: later commits changed the same paths.
            DirtyBranchError: the branch has uncommitted changes.
        """

    # -- optional capabilities ---------------------------------------------------------------

    def local_path(self, ref: str, path: str) -> str | None:
        """A path or URL that DuckDB / pyarrow can read in place, if the backend has one."""
        return None

    def fsck(self) -> list[str]:
        """Check the whole store; return a list of problems (empty when healthy)."""
        from store.errors import UnsupportedOperationError

        raise UnsupportedOperationError(f"{type(self).__name__} has no fsck")

    def gc(self, retention: timedelta, *, exclusive_objects: bool = False) -> int:
        """Remove unreachable data older than ``retention``; return how many objects went.

        ``exclusive_objects``: the caller asserts no other lake shares the object location.
        """
        from store.errors import UnsupportedOperationError

        raise UnsupportedOperationError(f"{type(self).__name__} has no gc")

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and files. The backend is unusable afterwards."""
