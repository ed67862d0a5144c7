"""Names: validation of logins, namespaces, branch and tag names and object paths, and the
namespace encoding.

A user sees branches as ``<namespace>/<branch>`` (``user:avery/exp``) and production branches by
their bare name (``main``). Backends only see *backend branch names*, which must satisfy lakeFS's
rule (letters, digits, ``-`` and ``_``). The encoding is the same on every backend:

* ``production`` branches keep their bare name (``main``).
* ``user:<login>`` becomes ``u-<login'>__<branch>`` and ``team:<name>`` becomes
  ``t-<name'>__<branch>``, where ``<login'>`` keeps ``[A-Za-z0-9-]`` and writes any other byte
  of its UTF-8 form as ``_hh`` (two lowercase hex digits).

Short branch names may not contain ``__``, and an encoded namespace never does, so the first
``__`` always separates namespace from branch and the mapping is reversible. A backend name this
encoding does not produce (a branch another lakeFS client made: ``_scratch``, ``dev__old``,
``u-avery__a__b``) is a *foreign* branch: it counts as production and keeps its backend name, by
which it is listed and addressed.

Every parser here checks its input's length before anything else and runs in linear time.
Which ref wins when names clash, and the names refused so that they never clash, are described
in :mod:`store.refs`.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from store.errors import AmbiguousNameError, InvalidNameError, InvalidPathError

PRODUCTION = "production"
NAMESPACE_KINDS = {"user": "u", "team": "t"}
_PREFIX_KINDS = {v: k for k, v in NAMESPACE_KINDS.items()}

#: Longest short branch name and tag name, in characters.
MAX_BRANCH = 200
#: Longest login / team name, in characters.
MAX_OWNER = 64
#: Longest backend branch name addressable as a foreign branch (an encoded 64-character
#: non-ASCII login takes up to ~780 characters, so this leaves room for any flowlake name).
MAX_BACKEND_BRANCH = 1024
#: Longest object path, in UTF-8 bytes.
MAX_PATH = 1024
#: Commit ids are 64 lowercase hex digits; a prefix must have at least this many.
MIN_COMMIT_PREFIX = 4

_SHORT_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_BACKEND_BRANCH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")  # lakeFS: ^\w[-\w]*$
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT_LIKE = re.compile(r"^[0-9a-f]+$")
_LITERAL = re.compile(r"[A-Za-z0-9-]")
# C0 and C1 control characters (Unicode category Cc) and the Unicode line/paragraph separators.
_PATH_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_OWNER_RULE = (
    f"1-{MAX_OWNER} characters in Unicode NFC form, without '/', ':', '~', '^', control or "
    "invisible format characters, and without spaces at either end"
)


def shown(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to about ``limit`` characters, for error messages about any input."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _owner_problem(owner: str) -> str | None:
    """What is wrong with a login or team name, or None when it is fine."""
    if not owner:
        return "is empty"
    if len(owner) > MAX_OWNER:
        return f"is {len(owner)} characters long"
    if owner != owner.strip():
        return "starts or ends with a space"
    for ch in owner:
        if ch in "/:~^":
            return f"holds {ch!r}"
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Zl", "Zp") or (category == "Zs" and ch != " "):
            return f"holds the control, format or space character U+{ord(ch):04X}"
    if unicodedata.normalize("NFC", owner) != owner:
        return "is not in Unicode NFC form (a letter and its accent are separate characters)"
    return None


def validate_login(login: str) -> str:
    """Check a login (``FLOWLAKE_USER``, the OS user, ``store.open(user=...)``) and return it.

    A login names the namespace ``user:<login>``, so it follows the namespace name rules.

    Raises:
        InvalidNameError: not a string, or it breaks the rules (the message says which).
    """
    if not isinstance(login, str):
        raise InvalidNameError(f"user login must be a string, got {type(login).__name__}")
    problem = _owner_problem(login)
    if problem is not None:
        raise InvalidNameError(
            f"invalid user login {shown(login)}: it {problem}; a login is {_OWNER_RULE} "
            "(set FLOWLAKE_USER or pass user=...)"
        )
    return login


@dataclass(frozen=True, order=True)
class Namespace:
    """A namespace: ``production``, ``user:<login>`` or ``team:<name>``.

    Building one validates it, so a ``Namespace`` always encodes to a readable branch name.

    Raises:
        InvalidNameError: unknown kind, or a bad owner name.
    """

    kind: str
    owner: str = ""

    def __post_init__(self) -> None:
        if self.kind == PRODUCTION:
            if self.owner:
                raise InvalidNameError("the production namespace has no owner name")
            return
        if self.kind not in NAMESPACE_KINDS:
            raise InvalidNameError(
                f"invalid namespace kind {shown(str(self.kind))}: use 'user' or 'team'"
            )
        problem = _owner_problem(self.owner) if isinstance(self.owner, str) else "is not text"
        if problem is not None:
            raise InvalidNameError(
                f"invalid namespace {shown(f'{self.kind}:{self.owner}')}: the name after ':' "
                f"{problem}; use {_OWNER_RULE}"
            )

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
                f"invalid namespace {shown(text)}: use 'production', 'user:<name>' or 'team:<name>'"
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


PRODUCTION_NAMESPACE = Namespace(PRODUCTION)


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


def _short_problem(short: str) -> str | None:
    if not short:
        return "is empty"
    if len(short) > MAX_BRANCH:
        return f"is longer than {MAX_BRANCH} characters"
    if not _SHORT_BRANCH.match(short) or "__" in short:
        return "breaks the rules"
    return None


@dataclass(frozen=True, order=True)
class BranchName:
    """A branch: its namespace and its short name inside it.

    A foreign branch (see the module docstring) is in ``production`` with its backend name as
    ``short``.
    """

    namespace: Namespace
    short: str

    def __str__(self) -> str:
        if self.namespace.is_production:
            return self.short
        return f"{self.namespace}/{self.short}"

    def backend_name(self) -> str:
        """The name the backend stores (lakeFS-compatible)."""
        return self.namespace.backend_prefix() + self.short

    @property
    def is_foreign(self) -> bool:
        """Whether this is a backend branch flowlake's encoding never produces."""
        return _short_problem(self.short) is not None

    @classmethod
    def from_backend(cls, name: str) -> BranchName:
        """Decode a backend branch name.

        A name flowlake's encoding produces decodes to that branch (the decoding is checked by
        encoding it again); any other name is a production branch under its backend name.
        Decodings are memoized (names are immutable values), so listing thousands of branches
        checks each name once per process.
        """
        return _from_backend(name)


def _decode_backend(name: str) -> BranchName:
    head, sep, short = name.partition("__")
    if sep and len(head) > 2 and head[1] == "-" and head[0] in _PREFIX_KINDS:
        try:
            namespace = Namespace(_PREFIX_KINDS[head[0]], _decode(head[2:]))
            decoded: BranchName | None = BranchName(namespace, validate_short_branch(short))
        except (ValueError, UnicodeDecodeError):  # InvalidNameError is a ValueError
            decoded = None
        if decoded is not None and decoded.backend_name() == name:
            return decoded
    return BranchName(PRODUCTION_NAMESPACE, name)


#: Bounded so a process listing many lakes cannot grow it without limit; 64k names is ~20 MB.
_from_backend = functools.lru_cache(maxsize=1 << 16)(_decode_backend)


@functools.lru_cache(maxsize=1 << 16)
def listed_names(backend_name: str) -> tuple[str, str]:
    """``(full branch name, namespace)`` as listings show a backend branch name (memoized)."""
    name = _from_backend(backend_name)
    return str(name), str(name.namespace)


def is_foreign_backend_name(name: str) -> bool:
    """Whether ``name`` is a lakeFS-valid backend branch name that flowlake never produces."""
    return (
        len(name) <= MAX_BACKEND_BRANCH
        and _BACKEND_BRANCH.match(name) is not None
        and _short_problem(name) is not None
        and BranchName.from_backend(name).namespace.is_production
    )


def validate_short_branch(short: str) -> str:
    """Check the syntax of a branch name without namespace.

    Raises:
        InvalidNameError: empty, too long, bad characters, or holds ``__``.
    """
    if not isinstance(short, str) or not short:
        raise InvalidNameError("branch name must be a non-empty string")
    if _short_problem(short) is not None:
        raise InvalidNameError(
            f"invalid branch name {shown(short)}: use letters, digits, '-' and '_' (not '__'), "
            f"starting with a letter or digit, at most {MAX_BRANCH} characters"
        )
    return short


def parse_branch(text: str, default_namespace: Namespace) -> BranchName:
    """Parse a name for a new branch: ``<namespace>/<branch>``, or ``<branch>`` in
    ``default_namespace``.

    Raises:
        InvalidNameError: the namespace or the branch name is invalid.
    """
    if not isinstance(text, str) or not text:
        raise InvalidNameError("branch name must be a non-empty string")
    if len(text) > MAX_BACKEND_BRANCH:
        raise InvalidNameError(f"branch name {shown(text)} is too long")
    ns_text, sep, short = text.rpartition("/")
    namespace = Namespace.parse(ns_text) if sep else default_namespace
    return BranchName(namespace, validate_short_branch(short))


def parse_branch_ref(text: str, default_namespace: Namespace) -> BranchName:
    """Parse a name that refers to an existing branch.

    Accepts what :func:`parse_branch` accepts, and foreign branches by their backend name, bare
    (``dev__old``) or qualified (``production/dev__old``).

    Raises:
        InvalidNameError: not a branch name.
    """
    if not isinstance(text, str) or not text:
        raise InvalidNameError("branch name must be a non-empty string")
    if len(text) > MAX_BACKEND_BRANCH:
        raise InvalidNameError(f"branch name {shown(text)} is too long")
    ns_text, sep, short = text.rpartition("/")
    namespace = Namespace.parse(ns_text) if sep else default_namespace
    if _short_problem(short) is None:
        return BranchName(namespace, short)
    if (not sep or namespace.is_production) and is_foreign_backend_name(short):
        return BranchName(PRODUCTION_NAMESPACE, short)
    if not sep and _BACKEND_BRANCH.match(short):
        decoded = BranchName.from_backend(short)
        if not decoded.namespace.is_production:
            raise InvalidNameError(
                f"{shown(short)} is how the backend stores branch '{decoded}'; use that name"
            )
    return BranchName(namespace, validate_short_branch(short))


def looks_like_commit_id(text: str) -> bool:
    """Whether ``text`` could be a commit id or a prefix of one (4-64 lowercase hex digits)."""
    return MIN_COMMIT_PREFIX <= len(text) <= 64 and _COMMIT_LIKE.match(text) is not None


def check_new_branch_name(short: str) -> str:
    """The rules a new branch's short name follows beyond its syntax.

    Raises:
        AmbiguousNameError: the name looks like a commit id.
    """
    if looks_like_commit_id(short):
        raise AmbiguousNameError(
            f"branch name {shown(short)} looks like a commit id (4-64 digits 0-9a-f), so refs "
            "to it would be ambiguous; add a letter after 'f', or a '-'"
        )
    return short


def validate_tag(name: str) -> str:
    """Check the syntax of a tag name.

    Raises:
        InvalidNameError: empty, too long or bad characters.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_BRANCH or not _TAG.match(name):
        raise InvalidNameError(
            f"invalid tag name {shown(str(name))}: use letters, digits, '.', '-' and '_', "
            f"starting with a letter or digit, at most {MAX_BRANCH} characters"
        )
    if ".." in name or name.endswith("."):
        raise InvalidNameError(
            f"invalid tag name {shown(name)}: '..' and a final '.' are not allowed"
        )
    return name


def check_new_tag_name(name: str) -> str:
    """Check a new tag's name: its syntax, and the rules that keep refs unambiguous.

    Raises:
        InvalidNameError: bad syntax, it holds ``__`` (the separator of namespaced branch
            names on the backend), or it ends with ``.lock`` (refused by lakeFS, as by git).
        AmbiguousNameError: the name looks like a commit id.
    """
    validate_tag(name)
    if "__" in name:
        raise InvalidNameError(
            f"invalid tag name {shown(name)}: '__' separates namespace and branch in backend "
            "branch names, so tags may not hold it"
        )
    if looks_like_commit_id(name):
        raise AmbiguousNameError(
            f"tag name {shown(name)} looks like a commit id (4-64 digits 0-9a-f), so refs to it "
            "would be ambiguous; add a letter after 'f', a '-' or a '.'"
        )
    if name.endswith(".lock"):
        # git's ref rule, which lakeFS applies to tag ids: refused here so both backends agree.
        raise InvalidNameError(f"invalid tag name {shown(name)}: it may not end with '.lock'")
    return name


def validate_path(path: str) -> str:
    """Check an object path and return it unchanged.

    Paths are relative, ``/``-separated, valid Unicode (so valid UTF-8 once stored), at most
    :data:`MAX_PATH` bytes, with no empty, ``.`` or ``..`` parts, and no control characters
    (C0, DEL, C1) or Unicode line separators.

    Raises:
        InvalidPathError: the path breaks one of those rules (the message says which).
    """
    if not isinstance(path, str):
        raise InvalidPathError(f"path must be a string, got {type(path).__name__}")
    if not path:
        raise InvalidPathError("path is empty")
    if len(path) > MAX_PATH:  # characters <= UTF-8 bytes: checked before any encoding work
        raise InvalidPathError(f"path is longer than {MAX_PATH} bytes: {shown(path)}")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidPathError(
            f"path {path!r} is not valid Unicode: it holds a lone surrogate, which is how Python "
            "shows the bytes of a local file name that is not UTF-8; rename the file"
        ) from None
    if size > MAX_PATH:
        raise InvalidPathError(f"path is longer than {MAX_PATH} bytes: {shown(path)}")
    bad = _PATH_CONTROL.search(path)
    if bad is not None:
        raise InvalidPathError(
            f"path {path!r} holds the control character U+{ord(bad.group()):04X}"
        )
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


_QUOTED_BACKEND_BRANCH = re.compile(r"'([ut]-[A-Za-z0-9_-]+)'")


def user_facing(message: str) -> str:
    """Rewrite quoted backend branch names in an error message to the names people use."""

    def rename(match: re.Match[str]) -> str:
        name = BranchName.from_backend(match.group(1))
        return match.group() if name.namespace.is_production else f"'{name}'"

    return _QUOTED_BACKEND_BRANCH.sub(rename, message)
