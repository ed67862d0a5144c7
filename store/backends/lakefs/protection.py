"""Branch protection through lakeFS branch protection rules.

A lakeFS rule is a glob over branch names that blocks staging writes and commits (merges and
reverts stay allowed), which is flowlake's meaning of "protected". Rules are one setting per
repository, updated with compare-and-swap on its ETag. lakeFS servers cache that setting for a
few seconds, so :func:`protect` waits until the server it talks to enforces the new rule.
"""

from __future__ import annotations

import time
import uuid
from fnmatch import fnmatchcase
from typing import Any

import lakefs_sdk

from store.backends.lakefs.errors import boundary
from store.errors import (
    BranchNotFoundError,
    ConcurrentUpdateError,
    ProtectedBranchError,
    StoreError,
)

#: How long lakeFS may take to enforce a new rule (its settings cache lives ~3 s plus jitter).
ENFORCE_TIMEOUT_S = 20.0
_CAS_TRIES = 5


def patterns(sdk: Any, repository: str) -> list[str]:
    """The repository's protection rule patterns."""
    with boundary():
        rules = sdk.repositories_api.get_branch_protection_rules(repository)
    return [rule.pattern for rule in rules]


def matches_any(branch: str, globs: list[str]) -> bool:
    """Whether a rule pattern matches the branch name (``*``, ``?`` and ``[...]`` globs)."""
    return any(fnmatchcase(branch, pattern) for pattern in globs)


def protect(sdk: Any, repository: str, branch: str) -> None:
    """Add a rule protecting exactly ``branch`` and wait until lakeFS enforces it.

    Raises:
        ConcurrentUpdateError: the rules kept changing under us.
        StoreError: lakeFS did not enforce the rule within :data:`ENFORCE_TIMEOUT_S`.
    """
    api = sdk.repositories_api
    for _ in range(_CAS_TRIES):
        with boundary():
            response = api.get_branch_protection_rules_with_http_info(repository)
        rules = list(response.data)
        if any(rule.pattern == branch for rule in rules):
            break
        etag = (response.headers or {}).get("ETag", "")
        rules.append(lakefs_sdk.BranchProtectionRule(pattern=branch))
        try:
            with boundary():
                api.set_branch_protection_rules(repository, rules, if_match=etag)
            break
        except StoreError as exc:
            if "precondition failed" not in str(exc).lower():
                raise
    else:
        raise ConcurrentUpdateError(f"{repository} protection rules", None, None)
    _await_enforced(sdk, repository, branch)


def _await_enforced(sdk: Any, repository: str, branch: str) -> None:
    # Resetting a path nobody staged changes nothing, but lakeFS checks protection first:
    # once it answers "protected branch", writes and commits are blocked too.
    probe = lakefs_sdk.ResetCreation(type="object", path=f".flowlake-probe/{uuid.uuid4().hex}")
    deadline = time.monotonic() + ENFORCE_TIMEOUT_S
    delay = 0.1
    while True:
        try:
            with boundary(BranchNotFoundError):
                sdk.branches_api.reset_branch(repository, branch, probe)
        except ProtectedBranchError:
            return
        if time.monotonic() > deadline:
            raise StoreError(
                f"lakeFS did not enforce protection of {branch!r} within {ENFORCE_TIMEOUT_S}s"
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
