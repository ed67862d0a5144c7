"""A lakeFS hook that refuses changes of ``main`` that did not pass flowlake's gates.

flowlake checks its gates client-side (:mod:`store.policy.enforce`); a client that talks to
lakeFS with the raw SDK skips them. This module makes the lakeFS server itself refuse such a
merge where lakeFS allows it:

* :func:`install` puts :data:`ACTION_PATH`, a lakeFS Action with one Lua hook on the default
  branch's ``pre-merge``, ``pre-revert``, ``pre-cherry-pick`` and ``pre-commit``, on that branch
  (through a scratch branch and a merge, since the branch is protected against direct commits).
* On a merge the hook recomputes :func:`attest` over ``("merge", <source commit id>)``, on a
  revert over ``("revert", <reverted commit id>, <the branch's head>)``, with the key from the
  lakeFS server's environment (:data:`SERVER_KEY_ENV`, handed to the hook as a ``{{ ENV.… }}``
  argument), and refuses unless the new commit's metadata holds it under
  :data:`ATTESTATION_KEY`. It refuses every cherry-pick and every commit (flowlake does neither
  on ``main``; lakeFS branch protection stops neither a cherry-pick nor an import, which commits
  through ``pre-commit``). With no key on the server the
  action fails to load, which lakeFS also treats as a refusal (fail closed).
* :func:`attestation_metadata` computes that value with the promoter's copy of the key
  (:data:`CLIENT_KEY_ENV`); only flowlake's enforcement point asks for it, after every gate held
  on exactly that source commit (``LakeFSBackend.merge_attested`` / ``revert_attested``).

What this does not guarantee (lakeFS OSS 1.86.0, read from its source): lakeFS loads the
actions of a ``pre-merge`` from the *source commit* (``pkg/graveler/graveler.go``: the hook
record's ``SourceRef`` is ``fromCommit.CommitID``; ``pkg/catalog/actions_source.go`` lists
``_lakefs_actions/`` at ``record.SourceRef``), and those of a ``pre-commit`` from the
committing branch including its staged changes (``SourceRef: branchID.Ref()``). So a source
commit that lacks this file (made on a branch that deleted or edited it, or from any commit
older than the hook, such as the repository's first) merges without the hook running, and no
hook can stop that commit. And any repository writer can read :data:`SERVER_KEY_ENV` with an
action of their own (``{{ ENV.LAKEFSACTION_… }}`` arguments are filled in for every action).
The hook therefore refuses ungated merges of ordinary branches (made from ``main`` after the
hook, not tampered with), such as a raw-SDK merge by mistake; it does not stop a writer who sets
out to bypass it. docs/policy.md states this in full; ``tests/test_policy_lakefs_hook.py``
asserts each limitation so a lakeFS change that closes one is noticed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

import lakefs_sdk

from store.backends.lakefs import transfer
from store.backends.lakefs.errors import boundary
from store.errors import (
    ConcurrentUpdateError,
    InvalidArgumentError,
    ObjectNotFoundError,
    UnsupportedOperationError,
)

if TYPE_CHECKING:
    from store.lake import Lake

#: Where the action lives on the default branch (lakeFS reads actions under ``_lakefs_actions/``).
ACTION_PATH = "_lakefs_actions/flowlake_gates.yaml"
#: The lakeFS server's environment variable holding the key (lakeFS hands only variables with
#: the ``LAKEFSACTION_`` prefix to actions by default: ``actions.env.prefix``).
SERVER_KEY_ENV = "LAKEFSACTION_FLOWLAKE_GATE_KEY"
#: The promoter's (CI's) environment variable holding the same key.
CLIENT_KEY_ENV = "FLOWLAKE_GATE_KEY"
#: Merge-commit metadata key of the attestation (a key the backend reserves for itself).
ATTESTATION_KEY = "flowlake.gate-attestation"
#: The hook's id, which lakeFS names in its refusal.
HOOK_ID = "flowlake_gate_attestation"
#: Shortest accepted key, in characters (e.g. ``openssl rand -hex 32`` gives 64).
MIN_KEY_CHARS = 32
#: lakeFS caches a ref's list of actions for up to this long (5 s plus up to 2.5 s of jitter,
#: ``pkg/catalog/actions_source.go``), keyed by the ref's name: for a ``pre-revert`` or
#: ``pre-cherry-pick`` on ``main`` a list made just before the install may hide the new hook.
ACTIONS_CACHE_S = 7.5
_DOMAIN = "flowlake-gate-v1"

_LUA = """\
local hmac = require("crypto/hmac")
local hex = require("encoding/hex")
local key = args.key
if key == nil or string.len(key) < MIN_KEY then
  error("flowlake gate: the lakeFS server has no usable LAKEFSACTION_FLOWLAKE_GATE_KEY")
end
local head = "DOMAIN\\n" .. action.repository_id .. "\\n" .. action.branch_id .. "\\n"
local message, what
if action.event_type == "pre-merge" then
  message = head .. "merge\\n" .. action.source_ref
  what = "merge of " .. action.source_ref .. " into " .. action.branch_id
elseif action.event_type == "pre-revert" then
  local reverted = action.commit.metadata["reverted"] or ""
  message = head .. "revert\\n" .. reverted .. "\\n" .. (action.commit.parents[1] or "")
  what = "revert on " .. action.branch_id
else
  error("flowlake gate: " .. action.event_type .. " on " .. action.branch_id
    .. " refused: it changes only by gated merges and attested reverts")
end
local expected = hex.encode(hmac.sign_sha256(message, key))
local given = action.commit.metadata["ATTESTATION"]
-- Compare MACs of both values, so the comparison's timing says nothing about the expected one.
if given == nil or hmac.sign_sha256(given, key) ~= hmac.sign_sha256(expected, key) then
  error("flowlake gate: " .. what .. " refused: no valid gate attestation (ATTESTATION);"
    .. " go through flowlake (flowlake promote / lake.merge / revert) with FLOWLAKE_GATE_KEY set")
end
"""


def _script() -> str:
    return (
        _LUA.replace("MIN_KEY", str(MIN_KEY_CHARS))
        .replace("DOMAIN", _DOMAIN)
        .replace("ATTESTATION", ATTESTATION_KEY)
    )


def action_document(default_branch: str) -> bytes:
    """The action file :func:`install` writes: one Lua ``pre-merge`` hook on ``default_branch``.

    Returns:
        UTF-8 YAML. The key appears only as the ``{{ ENV.… }}`` reference, never its value.
    """
    script = "\n".join(f"        {line}" if line else "" for line in _script().splitlines())
    text = (
        "# Installed by flowlake (store/backends/lakefs/gatehook.py); see docs/policy.md.\n"
        "name: flowlake gates\n"
        "description: refuse merges into the default branch without a flowlake gate attestation\n"
        "on:\n"
        "  pre-merge:\n"
        f"    branches: [{default_branch}]\n"
        "  pre-revert:\n"
        f"    branches: [{default_branch}]\n"
        "  pre-cherry-pick:\n"
        f"    branches: [{default_branch}]\n"
        "  pre-commit:\n"
        f"    branches: [{default_branch}]\n"
        "hooks:\n"
        f"  - id: {HOOK_ID}\n"
        "    type: lua\n"
        "    properties:\n"
        "      args:\n"
        f'        key: "{{{{ ENV.{SERVER_KEY_ENV} }}}}"\n'
        "      script: |\n"
        f"{script}\n"
    )
    return text.encode()


def client_key() -> str | None:
    """The promoter's key from :data:`CLIENT_KEY_ENV`, or None when unset or empty.

    Raises:
        InvalidArgumentError: the key is shorter than :data:`MIN_KEY_CHARS` (the message gives
            the length wanted, never the value).
    """
    key = os.environ.get(CLIENT_KEY_ENV) or None
    if key is not None and len(key) < MIN_KEY_CHARS:
        raise InvalidArgumentError(
            f"{CLIENT_KEY_ENV} must be at least {MIN_KEY_CHARS} characters "
            "(e.g. the output of `openssl rand -hex 32`)"
        )
    return key


def attest(key: str, repository: str, branch: str, *subject: str) -> str:
    """The attestation the hook expects for one change of ``branch``.

    Args:
        key: the shared key.
        repository: the lakeFS repository.
        branch: the branch changed (the default branch).
        subject: ``("merge", <source commit id>)``, or ``("revert", <reverted commit id>,
            <the branch's head before the revert>)``.

    Returns:
        64 lowercase hex characters: HMAC-SHA256 over the domain tag, repository, branch and
        subject, one per line. Bound to all of them, so an attestation copied from another
        merge, revert, branch or repository does not verify.
    """
    message = "\n".join((_DOMAIN, repository, branch, *subject))
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def attestation_metadata(repository: str, branch: str, *subject: str) -> dict[str, str]:
    """``{ATTESTATION_KEY: attest(...)}`` with the key from :data:`CLIENT_KEY_ENV`; ``{}`` without.

    Raises:
        InvalidArgumentError: see :func:`client_key`.
    """
    key = client_key()
    if key is None:
        return {}
    return {ATTESTATION_KEY: attest(key, repository, branch, *subject)}


def installed(sdk: Any, repository: str, default_branch: str) -> bool:
    """Whether ``default_branch``'s head holds exactly the action :func:`install` writes."""
    try:
        with boundary(ObjectNotFoundError):
            current = sdk.objects_api.get_object(repository, default_branch, ACTION_PATH)
    except ObjectNotFoundError:
        return False
    return bytes(current) == action_document(default_branch)


def install(
    sdk: Any,
    repository: str,
    default_branch: str,
    wait: bool = True,
    metadata: dict[str, str] | None = None,
) -> str | None:
    """Put the gate hook's action on ``default_branch`` (a no-op when it is already there).

    The file goes in through a scratch branch made from the branch's head, committed and merged
    with an attestation: the merge's source already carries the new hook, so the server checks
    the installer's key against its own on this very merge. Merges are gated from the moment
    this returns (lakeFS looks their actions up by commit id); reverts and cherry-picks once
    lakeFS's actions cache has let go of ``main``'s old list, which ``wait`` waits out
    (:data:`ACTIONS_CACHE_S`).

    Args:
        metadata: more metadata for the merge commit (the policy layer's perimeter, principal
            and audit anchor, see :func:`install_on`).

    Returns:
        The merge commit's id, or None when nothing changed.

    Raises:
        InvalidArgumentError: :data:`CLIENT_KEY_ENV` is unset or too short.
        LakeFSError / StoreError: lakeFS refused (a key different from the server's, or none on
            the server, is refused by the hook, and the message names it).
    """
    if installed(sdk, repository, default_branch):
        return None
    _require_client_key()
    scratch = f"flowlake-gatehook-{uuid.uuid4().hex[:16]}"
    with boundary():
        head = sdk.branches_api.get_branch(repository, default_branch).commit_id
        creation = lakefs_sdk.BranchCreation(name=scratch, source=head)  # type: ignore[call-arg]
        sdk.branches_api.create_branch(repository, creation)
    try:
        transfer.upload(
            sdk.objects_api.api_client,
            repository,
            scratch,
            ACTION_PATH,
            io.BytesIO(action_document(default_branch)),
        )
        with boundary():
            commit = sdk.commits_api.commit(
                repository,
                scratch,
                lakefs_sdk.CommitCreation(message="flowlake: install the gate hook"),  # type: ignore[call-arg]
            )
        meta = {
            **(metadata or {}),
            **attestation_metadata(repository, default_branch, "merge", commit.id),
        }
        with boundary():
            merged = sdk.refs_api.merge_into_branch(
                repository,
                commit.id,
                default_branch,
                merge=lakefs_sdk.Merge(message="flowlake: install the gate hook", metadata=meta),  # type: ignore[call-arg]
            )
    finally:
        with boundary():
            sdk.branches_api.delete_branch(repository, scratch)
    if wait:
        time.sleep(ACTIONS_CACHE_S)
    return str(merged.reference)


def _require_client_key() -> None:
    if client_key() is None:
        raise InvalidArgumentError(
            f"installing the gate hook needs {CLIENT_KEY_ENV} (the same key as the lakeFS "
            f"server's {SERVER_KEY_ENV})"
        )


def install_on(lake: Lake, wait: bool = True) -> str | None:
    """:func:`install` on a lake opened with :func:`store.open`, with the caller's rights checked.

    Installing changes ``main``, so on a lake with a policy it needs the right to write
    ``production/main`` (the ``production`` perimeter, or a token with the ``promote`` scope),
    like a promotion. It changes how ``main`` is protected, so it is audited like a policy
    change: a ``gate-hook-install`` entry (actor, ``main``'s head before) anchored in the
    install's merge commit, then a ``merge`` entry naming that commit (``flowlake audit
    --verify``); a failed install appends ``gate-hook-install-failed`` and changes nothing else.
    An install that finds the hook already there changes nothing and is not audited.

    Returns:
        The merge commit's id, or None when the hook was already there.

    Raises:
        UnsupportedOperationError: the lake is not on lakeFS.
        PermissionDeniedError: the caller may not change ``main``.
        InvalidArgumentError, LakeFSError: see :func:`install`.
    """
    backend: Any = lake.backend
    if getattr(backend, "install_gate_hook", None) is None:
        raise UnsupportedOperationError(
            "the server-side gate hook is a lakeFS feature; on the embedded backend flowlake "
            "is the only writer and enforces the gates itself"
        )
    check_write = getattr(backend, "check_write", None)
    if check_write is not None:
        check_write(backend.default_branch, "install the gate hook on", fresh=True)
    from store.policy.enforce import PolicyBackend

    view = getattr(backend, "_inner", backend)
    if not isinstance(view, PolicyBackend):  # not opened with store.open: nothing to audit
        return cast("str | None", backend.install_gate_hook(wait))
    raw: Any = view._inner
    if installed(raw._sdk, raw.repository, raw.default_branch):
        return None
    _require_client_key()  # before anything is audited
    before = raw.branch_head(raw.default_branch)

    def change(metadata: dict[str, str]) -> str:
        merged = install(raw._sdk, raw.repository, raw.default_branch, wait, metadata)
        if merged is None:  # installed by someone else since the check above
            raise ConcurrentUpdateError(
                raw.default_branch, before, raw.branch_head(raw.default_branch)
            )
        return merged

    return view.audited_change_of_main("gate-hook-install", change)


def installed_on(lake: Lake) -> bool:
    """Whether ``main`` of a lakeFS lake holds exactly the hook :func:`install` writes.

    Raises:
        UnsupportedOperationError: the lake is not on lakeFS.
    """
    backend: Any = lake.backend
    if getattr(backend, "install_gate_hook", None) is None:
        raise UnsupportedOperationError("the server-side gate hook is a lakeFS feature")
    try:
        current = backend.open_read(backend.default_branch, ACTION_PATH).read()
    except ObjectNotFoundError:
        return False
    return bool(current == action_document(backend.default_branch))
