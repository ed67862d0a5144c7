"""User-facing refs, and the one order in which a ref's name is looked up.

A ref is ``<base>`` or ``<base>~N`` (``N`` first-parent steps back; ``~`` alone is ``~1``; chains
add up). The base is looked up in this order, the first match wins:

1. ``<namespace>/<branch>`` (``user:avery/exp``, ``production/main``): that branch, nothing else.
2. A full commit id (64 lowercase hex digits) of an existing commit.
3. A production branch of that name (so ``main`` is always production's ``main``).
4. A branch of that name in the caller's namespace.
5. A tag of that name.
6. A commit id prefix (at least 4 lowercase hex digits), when it matches exactly one commit.

So that no name can capture another's reads, flowlake refuses to create names that would answer
to the same ref: branch and tag names that look like commit ids (4-64 lowercase hex digits), a
namespace branch named like a production branch or a production branch named like a namespace
branch, a branch named like a tag, and a tag named like any branch. Names that clash anyway
(created by another lakeFS client, before this rule, or by two people at the same instant)
follow the order above; a qualified branch name or a full commit id always means what it says.

A branch read by name shows its uncommitted changes; every other ref reads a commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from store.backend import Backend
from store.errors import (
    AmbiguousNameError,
    BranchNotFoundError,
    InvalidNameError,
    RefNotFoundError,
)
from store.names import (
    MAX_BACKEND_BRANCH,
    PRODUCTION_NAMESPACE,
    BranchName,
    Namespace,
    looks_like_commit_id,
    parse_branch_ref,
    shown,
    validate_tag,
)

#: Longest ref accepted, ``~N`` steps included.
MAX_REF = MAX_BACKEND_BRANCH + 64
#: At most this many digits in one ``~N`` step.
MAX_STEP_DIGITS = 9

_FULL_COMMIT_ID = re.compile(r"^[0-9a-f]{64}$")
# Whitespace other than the plain space (which a login may hold: ``user:j smith/exp``), and
# C0 / C1 control characters.
_BAD_REF_CHAR = re.compile(r"[^\S ]|[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class RefSpec:
    """A parsed ref: the base name and how many first-parent steps back from it."""

    base: str
    back: int = 0

    @classmethod
    def parse(cls, text: str) -> RefSpec:
        """Parse ``name``, ``name~`` (one back) or ``name~N`` (chains add up: ``a~2~1`` = 3).

        No branch, tag or commit name holds ``~``, so the base ends at the first ``~``. Runs in
        time linear in the ref's length, which is bounded by :data:`MAX_REF`.

        Raises:
            InvalidNameError: empty, not a string, too long, holds control characters or
                whitespace other than a space, or a ``~`` not followed by digits.
        """
        if not isinstance(text, str) or not text:
            raise InvalidNameError("ref must be a non-empty string")
        if len(text) > MAX_REF:
            raise InvalidNameError(f"ref {shown(text)} is longer than {MAX_REF} characters")
        if _BAD_REF_CHAR.search(text):
            raise InvalidNameError(
                f"invalid ref {shown(text)}: control characters or whitespace other than ' '"
            )
        base, sep, steps = text.partition("~")
        if not sep:
            return cls(text)
        if not base:
            raise InvalidNameError(f"invalid ref {shown(text)}: nothing before '~'")
        back = 0
        for step in steps.split("~"):
            if not step:
                back += 1
            elif step.isascii() and step.isdigit() and len(step) <= MAX_STEP_DIGITS:
                back += int(step)
            else:
                raise InvalidNameError(
                    f"invalid ref {shown(text)}: '~' takes a number of steps back "
                    f"(at most {MAX_STEP_DIGITS} digits), as in 'main~2'"
                )
        return cls(base, back)


@dataclass(frozen=True)
class Target:
    """What a ref's base names: a commit, and the branch when the base named a branch."""

    commit: str
    branch: BranchName | None = None


def find_branch(backend: Backend, namespace: Namespace, name: str) -> tuple[BranchName, str]:
    """The existing branch ``name`` refers to, seen from ``namespace``, and its head.

    A qualified name means that branch; a bare one production's branch of that name if there
    is one, else the namespace's (steps 1, 3 and 4 of the module's order).

    Raises:
        InvalidNameError: not a branch name.
        BranchNotFoundError: no such branch.
    """
    parsed = parse_branch_ref(name, namespace)
    candidates = [parsed]
    if "/" not in name and not parsed.namespace.is_production:
        candidates.insert(0, BranchName(PRODUCTION_NAMESPACE, parsed.short))
    for candidate in candidates:
        try:
            return candidate, backend.branch_head(candidate.backend_name())
        except BranchNotFoundError:
            continue
    raise BranchNotFoundError(f"branch {shown(name)} does not exist")


def resolve_base(backend: Backend, namespace: Namespace, base: str) -> Target:
    """Look up a ref's base (no ``~N``) in the module's order.

    Raises:
        InvalidNameError: a malformed qualified branch name.
        RefNotFoundError: nothing answers to ``base`` (BranchNotFoundError for a missing
            qualified branch).
        AmbiguousRefError: a commit id prefix matches several commits.
    """
    if _FULL_COMMIT_ID.match(base):
        try:
            return Target(backend.get_commit(base).id)
        except RefNotFoundError:
            pass  # not a commit: maybe a branch named like one
    if "/" in base:
        branch, head = find_branch(backend, namespace, base)
        return Target(head, branch)
    try:
        branch, head = find_branch(backend, namespace, base)
        return Target(head, branch)
    except (BranchNotFoundError, InvalidNameError):
        pass
    tagged = _tag(backend, base)
    if tagged is not None:
        return Target(tagged)
    if looks_like_commit_id(base):
        # No branch and no tag has this name (checked above), so the backend's own lookup
        # can only find a commit.
        return Target(backend.resolve(base))
    raise RefNotFoundError(f"no branch, tag or commit named {shown(base)}{_git_hint(base)}")


def _git_hint(base: str) -> str:
    """A hint for a ref written in git syntax flowlake does not have (``main^``, ``HEAD``)."""
    if base == "HEAD" or base.startswith("HEAD^"):
        return "; flowlake has no HEAD: name the branch (for example 'main')"
    if "^" in base:
        parent = base.partition("^")[0] or "main"
        return f"; flowlake has no '^': it writes the parent as {shown(parent + '~1')}"
    return ""


def _tag(backend: Backend, name: str) -> str | None:
    """The commit tag ``name`` points at, or None."""
    try:
        validate_tag(name)
    except InvalidNameError:
        return None
    if "__" in name or looks_like_commit_id(name):
        # The backend's lookup would also find an encoded branch or a commit prefix.
        return backend.list_tags().get(name)
    try:
        # No branch answers to ``name`` (the caller looked), so the backend finds a tag or
        # nothing; one round trip instead of listing every tag.
        return backend.resolve(name)
    except RefNotFoundError:
        return None


def refuse_branch_clashes(backend: Backend, target: BranchName) -> None:
    """Refuse a new branch whose short name production, another namespace or a tag answers to.

    Raises:
        AmbiguousNameError: the name clashes (the message names what it clashes with).
    """
    short = target.short
    if target.namespace.is_production:
        for backend_name in backend.list_branches():
            other = BranchName.from_backend(backend_name)
            if other.short == short and other != target:
                raise AmbiguousNameError(
                    f"branch '{other}' exists, and the bare name {short!r} would then mean "
                    f"production's '{short}' instead; pick another name"
                )
        if short in backend.list_tags():
            raise _tag_clash(short)
        return
    try:
        backend.resolve(short)  # a production branch or a tag of that name (hex names refused)
    except RefNotFoundError:
        return
    try:
        backend.branch_head(short)
    except BranchNotFoundError:
        raise _tag_clash(short) from None
    raise AmbiguousNameError(
        f"production has a branch {short!r}, and the bare name {short!r} always means it; "
        f"pick another name for '{target}'"
    )


def _tag_clash(name: str) -> AmbiguousNameError:
    return AmbiguousNameError(
        f"a tag named {name!r} exists; a branch of that name would make {name!r} ambiguous"
    )


def refuse_tag_clashes(backend: Backend, name: str) -> None:
    """Refuse a new tag named like a branch of any namespace.

    Raises:
        AmbiguousNameError: a branch answers to that name.
    """
    for backend_name in backend.list_branches():
        branch = BranchName.from_backend(backend_name)
        if branch.short == name:
            raise AmbiguousNameError(
                f"branch '{branch}' exists; a tag {name!r} would make {name!r} ambiguous"
            )
