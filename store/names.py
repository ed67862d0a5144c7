"""Names: validation of branch, tag, namespace names and object paths, and the namespace encoding.

A user sees branches as ``<namespace>/<branch>`` (``user:avery/exp``) and production branches by
their bare name (``main``). Backends only see *backend branch names*, which must satisfy lakeFS's
rule (letters, digits, ``-`` and ``_``). The encoding is the same on every backend:

* ``production`` branches keep their bare name (``main``).
* ``user:<login>`` becomes ``u-<login'>__<branch>`` and ``team:<name>`` becomes
  ``t-<name'>__<branch>``, where ``<login'>`` keeps ``[A-Za-z0-9-]`` and writes any other byte
  of its UTF-8 form as ``_hh`` (two lowercase hex digits).

Short branch names may not contain ``__``, and an encoded namespace never does, so the first
``__`` always separates namespace from branch and the mapping is reversible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from store.errors import InvalidNameError, InvalidPathError

PRODUCTION = "production"
NAMESPACE_KINDS = {"user": "u", "team": "t"}
_PREFIX_KINDS = {v: k for k, v in NAMESPACE_KINDS.items()}

MAX_BRANCH = 200
_SHORT_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAMESPACE_NAME = re.compile(r"^[^\x00-\x1f/:~^\s][^\x00-\x1f/:~^]*$")
_LITERAL = re.compile(r"[A-Za-z0-9-]")
MAX_PATH = 1024


@dataclass(frozen=True, order=True)
class Namespace:
    """A namespace: ``production``, ``user:<login>`` or ``team:<name>``."""

    kind: str
    owner: str = ""

    @classmethod
    def parse(cls, text: str) -> Namespace:
        """Parse ``production``, ``user:<login>`` or ``team:<name>``.

        Raises:
            InvalidNameError: the text is not a namespace.
        """
        if not isinstance(text, str):
            raise InvalidNameError(f"namespace must be a string, got {type(text).__name__}")
        if text == PRODUCTION:
            return cls(PRODUCTION)
        kind, sep, owner = text.partition(":")
        if not sep or kind not in NAMESPACE_KINDS:
            raise InvalidNameError(
                f"invalid namespace {text!r}: use 'production', 'user:<name>' or 'team:<name>'"
            )
        if not owner or len(owner) > 64 or not _NAMESPACE_NAME.match(owner):
            raise InvalidNameError(
                f"invalid namespace {text!r}: the name after ':' must be 1-64 characters "
                "without '/', ':', '~', '^', whitespace at the start, or control characters"
            )
        return cls(kind, owner)

    def __str__(self) -> str:
        return PRODUCTION if self.kind == PRODUCTION else f"{self.kind}:{self.owner}"

    @property
    def is_production(self) -> bool:
        return self.kind == PRODUCTION

    def backend_prefix(self) -> str:
        """The prefix of this namespace's backend branch names ('' for production)."""
        if self.is_production:
            return ""
        return f"{NAMESPACE_KINDS[self.kind]}-{_encode(self.owner)}__"


def _encode(owner: str) -> str:
    out = []
    for ch in owner:
        if _LITERAL.match(ch):
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def _decode(encoded: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "_":
            raw.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(encoded[i].encode())
            i += 1
    return raw.decode("utf-8")


@dataclass(frozen=True, order=True)
class BranchName:
    """A branch: its namespace and its short name inside it."""

    namespace: Namespace
    short: str

    def __str__(self) -> str:
        if self.namespace.is_production:
            return self.short
        return f"{self.namespace}/{self.short}"

    def backend_name(self) -> str:
        """The name the backend stores (lakeFS-compatible)."""
        return self.namespace.backend_prefix() + self.short

    @classmethod
    def from_backend(cls, name: str) -> BranchName:
        """Decode a backend branch name. Names that are not flowlake-encoded count as production."""
        head, sep, short = name.partition("__")
        if sep and len(head) > 2 and head[1] == "-" and head[0] in _PREFIX_KINDS:
            try:
                owner = _decode(head[2:])
            except (ValueError, UnicodeDecodeError):
                return cls(Namespace(PRODUCTION), name)
            return cls(Namespace(_PREFIX_KINDS[head[0]], owner), short)
        return cls(Namespace(PRODUCTION), name)


def validate_short_branch(short: str) -> str:
    """Check a branch name without namespace.

    Raises:
        InvalidNameError: empty, too long, bad characters, or holds ``__``.
    """
    if not isinstance(short, str) or not short:
        raise InvalidNameError("branch name must be a non-empty string")
    if len(short) > MAX_BRANCH or not _SHORT_BRANCH.match(short) or "__" in short:
        raise InvalidNameError(
            f"invalid branch name {short!r}: use letters, digits, '-' and '_' (not '__'), "
            f"starting with a letter or digit, at most {MAX_BRANCH} characters"
        )
    return short


def parse_branch(text: str, default_namespace: Namespace) -> BranchName:
    """Parse ``<namespace>/<branch>`` or a bare ``<branch>`` in ``default_namespace``.

    Raises:
        InvalidNameError: the namespace or the branch name is invalid.
    """
    if not isinstance(text, str) or not text:
        raise InvalidNameError("branch name must be a non-empty string")
    ns_text, sep, short = text.rpartition("/")
    namespace = Namespace.parse(ns_text) if sep else default_namespace
    return BranchName(namespace, validate_short_branch(short))


def validate_tag(name: str) -> str:
    """Check a tag name.

    Raises:
        InvalidNameError: empty, too long or bad characters.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_BRANCH or not _TAG.match(name):
        raise InvalidNameError(
            f"invalid tag name {name!r}: use letters, digits, '.', '-' and '_', "
            "starting with a letter or digit"
        )
    if ".." in name or name.endswith("."):
        raise InvalidNameError(f"invalid tag name {name!r}: '..' and a final '.' are not allowed")
    return name


def validate_path(path: str) -> str:
    """Check an object path and return it unchanged.

    Paths are relative, ``/``-separated, with no empty, ``.`` or ``..`` parts.

    Raises:
        InvalidPathError: the path breaks one of those rules or holds NUL or control characters.
    """
    if not isinstance(path, str):
        raise InvalidPathError(f"path must be a string, got {type(path).__name__}")
    if not path:
        raise InvalidPathError("path is empty")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise InvalidPathError(f"path is longer than {MAX_PATH} bytes: {path[:60]!r}...")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise InvalidPathError(f"path {path!r} holds NUL or control characters")
    if path.startswith("/") or path.startswith("\\") or re.match(r"^[A-Za-z]:", path):
        raise InvalidPathError(f"path {path!r} is absolute; use a path relative to the lake")
    if "\\" in path:
        raise InvalidPathError(f"path {path!r} holds '\\'; use '/' as separator")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidPathError(f"path {path!r} has an empty, '.' or '..' part")
    return path


def validate_prefix(prefix: str) -> str:
    """Check a listing prefix: '' or a path that may end with '/'.

    Raises:
        InvalidPathError: the prefix is not a valid path prefix.
    """
    if prefix == "":
        return prefix
    validate_path(prefix.rstrip("/") if prefix.endswith("/") else prefix)
    return prefix


_QUOTED_BACKEND_BRANCH = re.compile(r"'([ut]-[A-Za-z0-9_-]*?__[A-Za-z0-9_-]+)'")


def user_facing(message: str) -> str:
    """Rewrite quoted backend branch names in an error message to the names people use."""
    return _QUOTED_BACKEND_BRANCH.sub(lambda m: f"'{BranchName.from_backend(m.group(1))}'", message)
