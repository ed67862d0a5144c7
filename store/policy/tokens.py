"""Machine tokens: secrets that identify CI, shown once, stored only as a SHA-256 digest.

A token reads ``flk_`` + 30 random base62 characters (about 178 bits from :mod:`secrets`) + 6
base62 characters of the CRC32 of the random part. The fixed prefix and the checksum follow
GitHub's token format (github.blog, "Behind GitHub's new authentication token formats", 2021):
secret scanners find leaked tokens with one regular expression (:data:`TOKEN_PATTERN`) and can
tell a real one from random text without asking the server, and a mistyped token is refused
before any lookup.

Only :class:`TokenRecord` values are stored: the digest, never the secret. Digests are compared
with :func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from store.durations import parse_duration
from store.errors import InvalidArgumentError, TokenError

PREFIX = "flk_"
RANDOM_CHARS = 30
CHECKSUM_CHARS = 6
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TOKEN_PATTERN = re.compile(rf"\b{PREFIX}[0-9A-Za-z]{{{RANDOM_CHARS + CHECKSUM_CHARS}}}\b")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
MAX_LIFETIME = timedelta(days=366)
#: What a token's scopes allow, each within what its perimeter allows its principals. Every
#: scope includes ``read``; a token without scopes may do everything the perimeter allows.
SCOPES: dict[str, str] = {
    "read": "read objects and list them (a read-only token)",
    "write": "create, delete and write branches other than main; commit; merge into them",
    "promote": "merge into main (promotions), revert on main, tag",
    "approve": "record approvals ('flowlake approve')",
    "admin": "change the policy (with promote) and revoke tokens",
}


@dataclass(frozen=True)
class TokenRecord:
    """What is stored about a token (never its secret).

    Attributes:
        name: unique among the lake's tokens; the principal is ``token:<name>``.
        perimeter: the one perimeter the token may act in.
        scopes: what it may do there, some of :data:`SCOPES` (e.g. ``("promote",)``); empty
            means everything the perimeter's policy allows its principals.
        digest: SHA-256 hex of the secret.
        created: when it was made (UTC).
        expires: when it stops working (UTC).
        revoked: when it was revoked, or None.
        last_used: when it last authenticated, or None.
    """

    name: str
    perimeter: str
    scopes: tuple[str, ...]
    digest: str
    created: datetime
    expires: datetime
    revoked: datetime | None = None
    last_used: datetime | None = None

    @property
    def principal(self) -> str:
        return f"token:{self.name}"


def parse_lifetime(text: str) -> timedelta:
    """``90s``, ``90m``, ``12h``, ``30d``, ``2w`` (:func:`store.durations.parse_duration`) as a
    duration above zero and at most a year.

    Raises:
        InvalidArgumentError: another spelling, zero, or longer than 366 days.
    """
    try:
        lifetime = parse_duration(text)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"token lifetime: {exc}") from None
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise InvalidArgumentError(f"token lifetime {text!r} must be above 0 and at most 366d")
    return lifetime


def create(
    name: str,
    perimeter: str,
    lifetime: timedelta,
    now: datetime,
    existing: Iterable[TokenRecord] = (),
    scopes: tuple[str, ...] = (),
) -> tuple[str, TokenRecord]:
    """A new token: its secret (to print once, then forget) and the record to store.

    Raises:
        InvalidArgumentError: a bad name, lifetime or scope, or the name of a token not
            revoked (a revoked token's name may be reused: rotation).
    """
    if not NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"token name {name!r} must start with a letter and hold only letters, digits, "
            "'.', '_' and '-' (64 at most)"
        )
    if any(r.name == name and r.revoked is None for r in existing):
        # A revoked name may be reused: rotating CI's token keeps its principal (token:<name>),
        # which the policy names, and the old secret's digest is replaced, so it stays refused.
        raise InvalidArgumentError(f"a token named {name!r} exists already: revoke it first")
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise InvalidArgumentError("a token's lifetime must be above 0 and at most 366 days")
    scopes = check_scopes(scopes)
    body = "".join(secrets.choice(BASE62) for _ in range(RANDOM_CHARS))
    secret = PREFIX + body + _checksum(body)
    record = TokenRecord(name, perimeter, scopes, digest(secret), now, now + lifetime)
    return secret, record


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """``scopes`` sorted without repeats.

    Raises:
        InvalidArgumentError: a scope that is not one of :data:`SCOPES` (named, with the known
            ones).
    """
    found = tuple(sorted(set(scopes)))
    for scope in found:
        if scope not in SCOPES:
            raise InvalidArgumentError(
                f"unknown token scope {scope!r}; the scopes are {', '.join(SCOPES)}"
            )
    return found


def allows(scopes: tuple[str, ...], scope: str) -> bool:
    """Whether a token with ``scopes`` may do what ``scope`` covers (empty: everything)."""
    return not scopes or scope in scopes or scope == "read"


def digest(secret: str) -> str:
    """SHA-256 hex of a secret: what is stored and compared."""
    return hashlib.sha256(secret.encode()).hexdigest()


def is_well_formed(secret: str) -> bool:
    """Whether ``secret`` has the token shape and a matching checksum (no lookup)."""
    if not TOKEN_PATTERN.fullmatch(secret):
        return False
    body = secret[len(PREFIX) : len(PREFIX) + RANDOM_CHARS]
    return hmac.compare_digest(secret[-CHECKSUM_CHARS:], _checksum(body))


def authenticate(records: Iterable[TokenRecord], secret: str, now: datetime) -> TokenRecord:
    """The record of the token ``secret``, if it may be used now.

    Every record's digest is compared in constant time, so timing tells nothing about which
    digest came close. Messages name the token by name only, never by its secret.

    Raises:
        TokenError: malformed, unknown, revoked or expired.
    """
    if not is_well_formed(secret):
        raise TokenError("the token is malformed (wrong prefix, length or checksum)")
    wanted = digest(secret)
    found = None
    for record in records:
        if hmac.compare_digest(record.digest, wanted):
            found = record
    if found is None:
        raise TokenError("the token is unknown to this lake")
    if found.revoked is not None:
        raise TokenError(f"token {found.name!r} was revoked on {found.revoked.isoformat()}")
    if now >= found.expires:
        raise TokenError(f"token {found.name!r} expired on {found.expires.isoformat()}")
    return found


def revoke(record: TokenRecord, now: datetime) -> TokenRecord:
    """The record, revoked at ``now`` (revoking twice keeps the first time)."""
    return record if record.revoked is not None else replace(record, revoked=now)


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode())
    chars = []
    for _ in range(CHECKSUM_CHARS):
        value, rest = divmod(value, 62)
        chars.append(BASE62[rest])
    return "".join(reversed(chars))
