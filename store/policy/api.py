"""What people and CI do with the policy: tokens, the audit log, approvals and gate dry runs.

Every function takes an open :class:`store.Lake` and acts through its enforcement point
(:class:`store.policy.enforce.PolicyBackend`), as the identity the lake was opened with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.errors import InvalidArgumentError, PermissionDeniedError, UnsupportedOperationError
from store.policy import audit
from store.policy.audit import AuditEntry
from store.policy.enforce import (
    META_AUDIT_HASH,
    META_AUDIT_SEQ,
    PRODUCTION_PERIMETER,
    Identity,
    PolicyBackend,
)
from store.policy.gates import GateOutcome, author, evaluate
from store.policy.model import Policy
from store.policy.tokens import TokenRecord, check_scopes, parse_lifetime

if TYPE_CHECKING:
    from store.lake import Lake


def _view(lake: Lake) -> PolicyBackend:
    inner = getattr(lake.backend, "_inner", None)
    if not isinstance(inner, PolicyBackend):
        raise UnsupportedOperationError("this lake was not opened with store.open")
    return inner


def identity(lake: Lake) -> Identity:
    """Who the lake was opened as, and in which perimeter."""
    return _view(lake).identity


def _policy(lake: Lake) -> Policy:
    policy = _view(lake).policy()
    if policy is None:
        raise InvalidArgumentError(
            "this lake has no policy: merge _flowlake/policy.toml into main first"
        )
    return policy


def _production_only(lake: Lake, what: str) -> PolicyBackend:
    view = _view(lake)
    _policy(lake)
    if view.identity.perimeter != PRODUCTION_PERIMETER:
        raise PermissionDeniedError(
            f"{what} needs the production perimeter; {view.identity.principal} acts in "
            f"{view.identity.perimeter!r}"
        )
    return view


def create_token(
    lake: Lake, name: str, perimeter: str, expires: str = "30d", scopes: tuple[str, ...] = ()
) -> tuple[str, TokenRecord]:
    """Create a machine token. Returns its secret (print it once; it is never stored) and the
    record that is stored (its SHA-256 digest only).

    Raises:
        PermissionDeniedError: the caller does not act in the production perimeter, or is a
            machine token.
        InvalidArgumentError: no policy, an unknown perimeter, a bad name, lifetime or scope
            (one not in :data:`store.policy.tokens.SCOPES`), or the name of a token not revoked
            (a revoked name may be reused, to rotate a token; the old secret stays refused).
    """
    scopes = check_scopes(scopes)
    view = _production_only(lake, "creating a token")
    if view.identity.principal.startswith("token:"):
        # A leaked token must not be able to mint successors that outlive its revocation.
        raise PermissionDeniedError(
            f"{view.identity.principal} is a machine token; only a person creates tokens"
        )
    if perimeter not in _policy(lake).perimeters:
        raise InvalidArgumentError(
            f"unknown perimeter {perimeter!r}; the policy defines "
            + ", ".join(sorted(_policy(lake).perimeters))
        )
    secret, record = view.ledger.create_token(name, perimeter, parse_lifetime(expires), scopes)
    view.ledger.append(
        view.identity.principal,
        "token-create",
        {
            "token": name,
            "perimeter": perimeter,
            "scopes": ",".join(record.scopes),
            "expires": record.expires.isoformat(),
        },
    )
    return secret, record


def list_tokens(lake: Lake) -> list[TokenRecord]:
    """Every token's record (never a secret: only digests are stored)."""
    return _view(lake).ledger.tokens()


def revoke_token(lake: Lake, name: str) -> TokenRecord:
    """Revoke a token; it fails on its next use.

    Raises:
        PermissionDeniedError: the caller does not act in the production perimeter, or is a
            token without the ``admin`` scope.
        TokenError: no token of that name.

    Revoking a revoked token changes nothing and returns its record (``revoked`` is the first
    revocation's time); only the first revocation is audited.
    """
    view = _production_only(lake, "revoking a token")
    view.require_scope("admin", "revoke a token")
    found = view.ledger.token(name)
    if found.revoked is not None:
        return found
    record = view.ledger.revoke_token(name)
    view.ledger.append(view.identity.principal, "token-revoke", {"token": name})
    return record


def audit_log(lake: Lake) -> list[AuditEntry]:
    """The audit chain, oldest first."""
    return _view(lake).ledger.entries()


def verify_audit(lake: Lake) -> list[str]:
    """Problems with the audit chain (empty when intact), checked against the chain heads
    anchored in the metadata of ``main``'s promotion commits."""
    view = _view(lake)
    anchors = []
    for commit in view.log(view.branch_head(view.default_branch)):
        seq = commit.metadata.get(META_AUDIT_SEQ)
        if seq is not None and seq.isdigit():
            anchors.append((int(seq), commit.metadata.get(META_AUDIT_HASH, "")))
    return audit.verify(view.ledger.entries(), sorted(anchors))


def check_gates(lake: Lake, source: str) -> list[GateOutcome]:
    """Dry-run the promotion gates of ``main``'s policy on the commit ``source`` resolves to.
    Changes nothing."""
    view = _view(lake)
    commit = lake.resolve(source)
    return evaluate(_policy(lake), view._inner, view.ledger, commit, view.identity, view.location)


def approve(lake: Lake, source: str) -> AuditEntry:
    """Record the caller's approval of the commit ``source`` resolves to (for ``approvals``
    gates).

    Raises:
        PermissionDeniedError: the caller made that commit, or is a token without the
            ``approve`` scope.
    """
    view = _view(lake)
    view.require_scope("approve", "approve a commit")
    commit = lake.resolve(source)
    if author(view._inner, commit) == view.identity.principal:
        raise PermissionDeniedError(
            f"{view.identity.principal} made {commit[:12]}: approve another's commit"
        )
    return view.ledger.append(view.identity.principal, "approve", {"commit": commit})
