"""The one error hierarchy of flowlake.

Every error the public API raises derives from :class:`StoreError`. Where a built-in exception
fits, the class inherits it too, so ``except KeyError`` or ``except PermissionError`` keeps
working for callers that do not know flowlake. Backends translate their own failures into these
classes at one boundary (see ``store.lakefs.errors``).
"""

from __future__ import annotations

from collections.abc import Sequence


class StoreError(Exception):
    """Root of every flowlake store error."""


class InvalidNameError(StoreError, ValueError):
    """A branch, tag, namespace or ref name breaks the naming rules."""


class AmbiguousNameError(InvalidNameError):
    """A well-formed name that would make a ref ambiguous (it looks like a commit id, or a tag,
    a production branch or a namespace branch already answers to it)."""


class InvalidPathError(StoreError, ValueError):
    """An object path is empty, absolute, holds ``..``, NUL or other forbidden parts."""


class InvalidArgumentError(StoreError, ValueError):
    """An argument has the wrong type or value (for example a bad merge strategy)."""


class NotFoundError(StoreError, KeyError):
    """Something named does not exist."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class RefNotFoundError(NotFoundError):
    """A branch, tag, commit id or ``ref~N`` does not resolve to a commit."""


class BranchNotFoundError(RefNotFoundError):
    """The branch does not exist."""


class ObjectNotFoundError(NotFoundError, FileNotFoundError):
    """No object at that path in that ref."""


class LakeNotFoundError(NotFoundError, FileNotFoundError):
    """No lake at that location (and it was not to be created)."""


class AlreadyExistsError(StoreError, FileExistsError):
    """A branch or tag of that name exists already."""


class PathClashError(StoreError, FileExistsError):
    """Two things claim one path on export: an object that is also a folder of other objects
    (``d/a`` and ``d/a/b``), or a local file where a folder must go (or the reverse)."""


class LakeFolderError(InvalidArgumentError):
    """A local path to import from or export to lies in a lake folder (one holding
    ``flowlake.json`` and ``refs.db``): a lake's own files are never read or written as data."""


class AmbiguousRefError(StoreError, ValueError):
    """A commit id prefix matches more than one commit."""


class PermissionDeniedError(StoreError, PermissionError):
    """The operation is not allowed (for example writing to a protected branch)."""


class TokenError(PermissionDeniedError):
    """A machine token is malformed, unknown, revoked or expired (the message never holds it)."""


class GateFailedError(PermissionDeniedError):
    """A promotion into ``main`` was refused by a policy gate; ``failures`` names each failed
    condition with its numbers. Nothing was changed."""

    def __init__(self, message: str, failures: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.failures: list[str] = list(failures)


class PolicyLimitError(PermissionDeniedError):
    """A job asks for more than its perimeter's policy allows (GPUs, CPUs, memory, a package
    index or image registry not listed); the message names the perimeter, the limit and the
    value. Nothing was created."""


class ProtectedBranchError(PermissionDeniedError):
    """The branch is protected: change it only by merging into it."""


class ConflictError(StoreError):
    """A merge or revert touches paths that both sides changed differently.

    Attributes:
        conflicts: the conflicting object paths, sorted.
    """

    def __init__(self, message: str, conflicts: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.conflicts: list[str] = sorted(conflicts)

    def __str__(self) -> str:
        base = super().__str__()
        if not self.conflicts:
            return base
        shown = ", ".join(self.conflicts[:10])
        more = f" and {len(self.conflicts) - 10} more" if len(self.conflicts) > 10 else ""
        return f"{base}: {shown}{more}"


class ConcurrentUpdateError(StoreError):
    """A branch head moved while an operation ran (compare-and-swap lost, retries exhausted).

    Attributes:
        branch: the branch whose head moved.
        expected: the head the writer read.
        actual: the head found when it tried to move it.
    """

    def __init__(self, branch: str, expected: str | None, actual: str | None) -> None:
        super().__init__(
            f"branch {branch!r} moved from {expected} to {actual} while updating it; retry"
        )
        self.branch, self.expected, self.actual = branch, expected, actual


class DirtyBranchError(StoreError):
    """The branch has uncommitted changes and the operation needs a clean branch."""


class NothingToCommitError(StoreError):
    """A commit was asked for on a branch with no uncommitted changes."""


class CorruptObjectError(StoreError, OSError):
    """Stored bytes do not match their content hash, or cannot be decoded."""


class PolicyError(StoreError, ValueError):
    """The policy file is invalid; ``.line`` is the line to blame (0 when no single one is)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"policy line {line}: {message}" if line else f"policy: {message}")
        self.line = line


class FormatVersionError(StoreError):
    """Stored data is in a format version newer than this flowlake reads: upgrade flowlake."""


class InvalidTableError(StoreError, ValueError):
    """Bytes that should be a Parquet table are not one (truncated or not Parquet)."""


class BackendUnavailableError(StoreError, ConnectionError):
    """The backend cannot be reached."""


class NotInstalledError(StoreError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class UnsupportedOperationError(StoreError, NotImplementedError):
    """The backend does not offer this capability."""


class RefsDatabaseError(StoreError, OSError):
    """A lake's refs database cannot be used: damaged, unreadable, or locked past the timeout."""


class LakeClosedError(StoreError, ValueError):
    """The lake was closed (``lake.close()``, or its ``with`` block ended): open it again."""


class SharedObjectsError(PermissionDeniedError):
    """gc was refused: the lake's objects live outside its folder, where other lakes may share
    them and keep references gc cannot see."""


class ReadOnlyRefError(PermissionDeniedError):
    """A write named a tag, a commit or ``ref~N``: those are read-only; write to a branch."""


class ObjectChangedError(StoreError, OSError):
    """An object was replaced on its branch while it was being read; read it again."""
