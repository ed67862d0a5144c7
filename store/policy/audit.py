"""The audit log's entries: an append-only hash chain of what changed production.

Each entry holds a sequence number, the hash of the entry before it and its own hash: the
SHA-256 of the entry's canonical JSON (keys sorted, no insignificant white space, UTF-8; for
the strings and integers entries hold this is the JSON Canonicalization Scheme, RFC 8785).
Editing an entry changes its hash; deleting one breaks the next entry's ``prev``; cutting off
the tail is caught by an *anchor*, the (sequence, hash) of a head recorded elsewhere (every
promotion records the chain's head in its commit metadata). The construction is the classic
hash chain of tamper-evident logs (Schneier and Kelsey, "Secure Audit Logs to Support Computer
Forensics", 1999), without the per-entry keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from store.errors import InvalidArgumentError

GENESIS = "0" * 64
Value = str | int | bool


@dataclass(frozen=True)
class AuditEntry:
    """One event in the chain.

    Attributes:
        seq: 1 for the first entry, then one more each time.
        time: when it happened, ISO 8601 with offset (UTC).
        actor: the principal that did it (``user:avery``, ``token:ci``).
        action: what happened: ``promote``, ``merge``, ``revert``, ``policy-change``,
            ``token-create``, ``token-use``, ``token-revoke``, ``gate``, ``gate-hook-install``
            (the lakeFS gate hook put on ``main``).
        details: what it was about (branch, commit ids, gate outcomes); strings, integers and
            booleans only, so the canonical form is unambiguous. Never a secret.
        prev: the hash of the entry before (:data:`GENESIS` for the first).
        hash: SHA-256 hex of the canonical JSON of every field above.
    """

    seq: int
    time: str
    actor: str
    action: str
    details: Mapping[str, Value]
    prev: str
    hash: str

    def body(self) -> dict[str, object]:
        """Every field but ``hash``: what the hash covers."""
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "details": dict(self.details),
            "prev": self.prev,
        }


def canonical(body: Mapping[str, object]) -> bytes:
    """The canonical JSON bytes of an entry body (RFC 8785 for strings, integers, booleans)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(body: Mapping[str, object]) -> str:
    return hashlib.sha256(canonical(body)).hexdigest()


def append(
    last: AuditEntry | None,
    actor: str,
    action: str,
    details: Mapping[str, Value],
    now: datetime,
) -> AuditEntry:
    """The entry that follows ``last`` (None: the first entry of a new chain).

    Raises:
        InvalidArgumentError: a detail value that is not a string, integer or boolean, or a
            time without a zone.
    """
    for key, value in details.items():
        if not isinstance(key, str) or not isinstance(value, str | int | bool):
            raise InvalidArgumentError(
                f"audit detail {key!r} must be a string, integer or boolean, not {value!r}"
            )
    if now.tzinfo is None:
        raise InvalidArgumentError("audit times need a zone (use datetime.now(UTC))")
    body = {
        "seq": 1 if last is None else last.seq + 1,
        "time": now.isoformat(),
        "actor": actor,
        "action": action,
        "details": dict(details),
        "prev": GENESIS if last is None else last.hash,
    }
    return AuditEntry(hash=entry_hash(body), **body)  # type: ignore[arg-type]


def verify(entries: Sequence[AuditEntry], anchors: Sequence[tuple[int, str]] = ()) -> list[str]:
    """Problems with a chain, in order; empty when it is intact.

    Args:
        entries: the whole log, in the order it is stored.
        anchors: (sequence, hash) pairs recorded elsewhere (promotion commits); each must be
            in the chain with that hash, so a cut-off tail or a rewritten chain is named.
    """
    problems: list[str] = []
    prev = GENESIS
    for position, entry in enumerate(entries, start=1):
        if entry.seq != position:
            problems.append(f"entry {position} has sequence number {entry.seq}: one was removed")
        if entry.prev != prev:
            problems.append(f"entry {entry.seq} does not follow the entry before it")
        if entry_hash(entry.body()) != entry.hash:
            problems.append(f"entry {entry.seq} ({entry.action}) was edited after it was written")
        prev = entry.hash
    by_seq = {e.seq: e.hash for e in entries}
    for seq, anchored in anchors:
        if seq not in by_seq:
            problems.append(f"entry {seq}, anchored in a promotion commit, is missing")
        elif by_seq[seq] != anchored:
            problems.append(f"entry {seq} differs from the hash anchored in a promotion commit")
    return problems
