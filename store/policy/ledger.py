"""Where tokens and the audit chain live: the lake's internal admin branch, on every backend.

Everything here uses only the backend contract (:mod:`store.backend`), so the embedded store
and lakeFS keep these records the same way. The admin branch is the production branch
:data:`ADMIN_BRANCH` (its name is reserved), made from the lake's first commit on first use;
it holds only ``_flowlake/tokens/<name>.json`` and ``_flowlake/audit/<seq>.json``. The policy
layer (:mod:`store.policy.enforce`) refuses every write to it from users, so it changes only
through :class:`Ledger`.

Each change is compare-and-swap: it is written and committed on a private scratch branch made
from the admin branch's head, then merged into the admin branch with the written paths as the
merge's ``guard``. When another writer changed one of those paths meanwhile (two audit appends
that both picked sequence number N, two tokens of one name), the merge fails and the change is
rebuilt on the new head and tried again, so concurrent appends never lose or duplicate a
sequence number.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from store.backend import Backend
from store.errors import (
    AlreadyExistsError,
    BranchNotFoundError,
    ConcurrentUpdateError,
    ConflictError,
    CorruptObjectError,
    StoreError,
    TokenError,
)
from store.policy import audit, tokens
from store.policy.audit import AuditEntry
from store.policy.tokens import TokenRecord

#: The backend name of the admin branch: a production branch name reserved for the ledger.
ADMIN_BRANCH = "flowlake-admin"
#: Scratch branches of admin changes start with this.
SCRATCH_PREFIX = "flowlake-admin-tx-"
TOKENS_PREFIX = "_flowlake/tokens/"
AUDIT_PREFIX = "_flowlake/audit/"
COMMITTER = "flowlake"
_TRIES = 12


def is_admin_branch(backend_name: str) -> bool:
    """Whether a backend branch belongs to the ledger (the admin branch or one of its scratch
    branches): users may never write there."""
    return backend_name == ADMIN_BRANCH or backend_name.startswith(SCRATCH_PREFIX)


def audit_path(seq: int) -> str:
    """The object path of audit entry ``seq`` (zero-padded, so paths sort by sequence)."""
    return f"{AUDIT_PREFIX}{seq:012d}.json"


class Ledger:
    """Tokens and the audit chain of one lake, over an unrestricted backend.

    Args:
        backend: the lake's backend itself (not the policy-enforcing view).
        clock: the current time (UTC); injected so tests can move it.
    """

    def __init__(self, backend: Backend, clock: Callable[[], datetime] | None = None) -> None:
        self._backend = backend
        self._clock = clock or (lambda: datetime.now(UTC))

    def now(self) -> datetime:
        return self._clock()

    # -- reading ---------------------------------------------------------------------------------

    def _head(self) -> str | None:
        try:
            return self._backend.branch_head(ADMIN_BRANCH)
        except BranchNotFoundError:
            return None

    def _objects(self, prefix: str, ref: str | None = None) -> Iterator[tuple[str, bytes]]:
        ref = ref or self._head()
        if ref is None:
            return
        for info in list(self._backend.list_objects(ref, prefix)):
            with self._backend.open_read(ref, info.path) as stream:
                yield info.path, stream.read()

    def tokens(self) -> list[TokenRecord]:
        """Every token record (revoked and expired ones too), by name."""
        return sorted(
            (_token_from_json(data) for _, data in self._objects(TOKENS_PREFIX)),
            key=lambda r: r.name,
        )

    def entries(self) -> list[AuditEntry]:
        """The whole audit chain as stored, in path (sequence) order.

        Raises:
            CorruptObjectError: an entry is not readable JSON of the entry shape (named).
        """
        return [_entry_from_json(path, data) for path, data in self._objects(AUDIT_PREFIX)]

    def last_entry(self, head: str | None = None) -> AuditEntry | None:
        """The newest entry, or None when the chain is empty."""
        head = head or self._head()
        if head is None:
            return None
        last = None
        for info in self._backend.list_objects(head, AUDIT_PREFIX):
            last = info.path
        if last is None:
            return None
        with self._backend.open_read(head, last) as stream:
            return _entry_from_json(last, stream.read())

    # -- writing ---------------------------------------------------------------------------------

    def append(self, actor: str, action: str, details: dict[str, audit.Value]) -> AuditEntry:
        """Append one entry to the chain (safe beside concurrent writers).

        Raises:
            InvalidArgumentError: a detail that is not a string, integer or boolean.
            ConcurrentUpdateError: the admin branch kept moving for every try.
        """

        def change(head: str) -> tuple[list[tuple[str, bytes]], AuditEntry]:
            entry = audit.append(self.last_entry(head), actor, action, details, self.now())
            return [(audit_path(entry.seq), _entry_to_json(entry))], entry

        return self._change(f"audit: {action} by {actor}", change)

    def create_token(
        self, name: str, perimeter: str, lifetime: Any, scopes: tuple[str, ...] = ()
    ) -> tuple[str, TokenRecord]:
        """Create a token; returns its secret (show it once) and the stored record.

        Raises:
            InvalidArgumentError: bad name or lifetime, or the name is taken.
        """
        now = self.now()

        def change(head: str) -> tuple[list[tuple[str, bytes]], tuple[str, TokenRecord]]:
            existing = [r for r in self.tokens() if r.name == name]
            secret, record = tokens.create(name, perimeter, lifetime, now, existing, scopes)
            return [(_token_path(name), _token_to_json(record))], (secret, record)

        return self._change(f"token: create {name}", change)

    def update_token(self, record: TokenRecord) -> TokenRecord:
        """Store a changed record of an existing token (revocation, last use)."""

        def change(head: str) -> tuple[list[tuple[str, bytes]], TokenRecord]:
            return [(_token_path(record.name), _token_to_json(record))], record

        return self._change(f"token: update {record.name}", change)

    def revoke_token(self, name: str) -> TokenRecord:
        """Revoke token ``name`` (revoking twice keeps the first time and writes nothing).

        Raises:
            TokenError: no token of that name.
        """
        found = self.token(name)
        if found.revoked is not None:
            return found  # an unchanged record would be an empty commit on the admin branch
        return self.update_token(tokens.revoke(found, self.now()))

    def token(self, name: str) -> TokenRecord:
        """Raises: TokenError when no token has that name."""
        for record in self.tokens():
            if record.name == name:
                return record
        raise TokenError(f"no token named {name!r} in this lake")

    def _change(
        self, message: str, build: Callable[[str], tuple[list[tuple[str, bytes]], Any]]
    ) -> Any:
        """Apply ``build(head)``'s writes to the admin branch by compare-and-swap; retry on
        conflict with a short random backoff. Returns what ``build`` returned on success."""
        for attempt in range(_TRIES):
            head = self._ensure_branch()
            items, result = build(head)
            scratch = f"{SCRATCH_PREFIX}{uuid.uuid4().hex}"
            self._backend.create_branch(scratch, head)
            try:
                self._backend.put_many(scratch, items)
                self._backend.commit(scratch, message, {}, COMMITTER)
                self._backend.merge(
                    scratch,
                    ADMIN_BRANCH,
                    None,
                    message,
                    {},
                    COMMITTER,
                    guard=[path for path, _ in items],
                )
                return result
            except (ConflictError, ConcurrentUpdateError):
                if attempt == _TRIES - 1:
                    raise
            finally:
                # A leftover scratch branch is harmless: it is never read.
                with contextlib.suppress(StoreError):
                    self._backend.delete_branch(scratch)
            time.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _ensure_branch(self) -> str:
        head = self._head()
        if head is not None:
            return head
        main = self._backend.branch_head(self._backend.default_branch)
        root = main
        for commit in self._backend.log(main):
            root = commit.id
        with contextlib.suppress(AlreadyExistsError):  # another writer made it first
            self._backend.create_branch(ADMIN_BRANCH, root)
        return self._backend.branch_head(ADMIN_BRANCH)


def _token_path(name: str) -> str:
    return f"{TOKENS_PREFIX}{name}.json"


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _token_to_json(record: TokenRecord) -> bytes:
    return json.dumps(
        {
            "name": record.name,
            "perimeter": record.perimeter,
            "scopes": list(record.scopes),
            "digest": record.digest,
            "created": _time(record.created),
            "expires": _time(record.expires),
            "revoked": _time(record.revoked),
            "last_used": _time(record.last_used),
        },
        sort_keys=True,
    ).encode()


def _token_from_json(data: bytes) -> TokenRecord:
    raw = json.loads(data)
    created, expires = _parse_time(raw["created"]), _parse_time(raw["expires"])
    assert created is not None and expires is not None
    return TokenRecord(
        name=raw["name"],
        perimeter=raw["perimeter"],
        scopes=tuple(raw["scopes"]),
        digest=raw["digest"],
        created=created,
        expires=expires,
        revoked=_parse_time(raw["revoked"]),
        last_used=_parse_time(raw["last_used"]),
    )


def _entry_to_json(entry: AuditEntry) -> bytes:
    return audit.canonical({**entry.body(), "hash": entry.hash})


def _entry_from_json(path: str, data: bytes) -> AuditEntry:
    try:
        raw = json.loads(data)
        return AuditEntry(
            seq=int(raw["seq"]),
            time=str(raw["time"]),
            actor=str(raw["actor"]),
            action=str(raw["action"]),
            details=dict(raw["details"]),
            prev=str(raw["prev"]),
            hash=str(raw["hash"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObjectError(f"audit entry {path} is unreadable: {exc}") from None
