"""``fs.transaction`` for ``flowlake://`` URLs: everything written inside becomes one commit.

The transaction is :meth:`store.Branch.transact` under fsspec's transaction protocol. The first
write inside it opens a scratch branch from the target branch; every later write and every read of
the target branch inside the transaction goes to the scratch branch (so ``put`` and ``cp`` see
what the transaction wrote). A clean exit commits the scratch branch and merges it into the
target as one merge commit with the transaction's message and metadata; an exception deletes the
scratch branch and the target is untouched.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from fsspec.transaction import Transaction

from store.branch import Branch
from store.errors import DirtyBranchError, InvalidArgumentError, ProtectedBranchError
from store.url.address import branch_ref

DEFAULT_MESSAGE = "Write through flowlake:// URLs"


class _Discarded(Exception):
    """Raised into the store's transaction to make it discard the scratch branch."""


class FlowlakeTransaction(Transaction):  # type: ignore[misc]
    """One commit on one branch for every write inside ``with fs.transaction:``.

    Use ``with fs.transaction:`` or, with a message and metadata,
    ``with fs.transaction(message="clean v2", metadata={"rows": 10}):``. A transaction writes to
    one branch; writing to a second one raises :class:`InvalidArgumentError`.
    """

    def __init__(
        self, fs: Any, message: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        super().__init__(fs)
        self.message = message or DEFAULT_MESSAGE
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._branch: Branch | None = None
        self._scratch: Branch | None = None
        self._stack = ExitStack()

    def __call__(
        self, message: str | None = None, metadata: dict[str, Any] | None = None
    ) -> FlowlakeTransaction:
        """Set the commit's message and metadata: ``with fs.transaction(message=...):``."""
        if message is not None:
            self.message = message
        if metadata is not None:
            self.metadata = dict(metadata)
        return self

    @property
    def branch(self) -> Branch | None:
        """The branch this transaction commits to (None before its first write)."""
        return self._branch

    def start(self) -> None:
        super().start()
        self._branch = self._scratch = None
        self._stack = ExitStack()

    def writing(self, branch: Branch) -> Branch:
        """The branch a write aimed at ``branch`` goes to: the transaction's scratch branch.

        Raises:
            InvalidArgumentError: the transaction already writes to another branch.
            ProtectedBranchError: ``branch`` is protected (change it by merging into it).
            DirtyBranchError: ``branch`` has uncommitted changes, which the merge at the end
                would refuse; checked before anything is written.
        """
        if self._branch is None:
            _check_target(branch)
            self._scratch = self._stack.enter_context(branch.transact(self.message, self.metadata))
            self._branch = branch
        elif branch != self._branch:
            raise InvalidArgumentError(
                f"a transaction commits to one branch: it writes to {self._branch.name!r}, "
                f"not {branch.name!r}"
            )
        assert self._scratch is not None
        return self._scratch

    def reading(self, ref: str) -> str:
        """The namespace-qualified branch a read of the branch ``ref`` (qualified) sees: the
        scratch branch's when ``ref`` is the transaction's branch."""
        if self._scratch is None or self._branch is None or ref != branch_ref(self._branch):
            return ref
        return branch_ref(self._scratch)

    def complete(self, commit: bool = True) -> None:
        """Commit (merge the scratch branch into the target) or discard everything written.

        Files still open are closed (and so written) before a commit, discarded otherwise.

        Raises:
            ConflictError: the target changed the same paths meanwhile (nothing is merged).
        """
        try:
            while self.files:
                f = self.files.popleft()
                if not commit:
                    f.discard()
                elif not f.closed:
                    f.close()
        except BaseException:
            commit = False
            raise
        finally:
            stack, self._stack = self._stack, ExitStack()
            self._branch = self._scratch = None
            if self.fs is not None:
                self.fs._intrans = False
                self.fs._transaction = None
            if commit:
                stack.close()
            else:
                stack.__exit__(_Discarded, _Discarded("transaction discarded"), None)


def _check_target(branch: Branch) -> None:
    lake = branch.lake
    for info in lake.branches(all_namespaces=True):
        if info.name == branch.name and info.protected:
            raise ProtectedBranchError(
                f"branch {branch.name!r} is protected: write on another branch and merge it"
            )
    if branch.uncommitted():
        raise DirtyBranchError(
            f"branch {branch.name!r} has uncommitted changes; commit or reset them before a "
            "transaction, which commits exactly what it writes"
        )
