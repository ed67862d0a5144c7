"""The one enforcement point of the policy: a view of the backend that checks every call.

:func:`policy_view` is what :func:`store.open` installs between the backend and the
:class:`store.Lake` handle, so the Python API, the CLI, tracking, compute and the dashboard all
pass through :class:`PolicyBackend` and none can skip it (STYLE rule 15). It

* authenticates the caller: a machine token (``FLOWLAKE_TOKEN`` / ``token=``) becomes the
  principal ``token:<name>`` in the token's one perimeter; otherwise the principal is
  ``user:<login>`` (embedded: ``FLOWLAKE_USER`` or the OS login; lakeFS: the lakeFS user the
  credentials belong to);
* checks the perimeter (``FLOWLAKE_PERIMETER`` / ``perimeter=``; default ``staging``) exists
  and admits the principal;
* checks every write (branch creation and deletion, tags, puts, deletes, commits, merges,
  reverts) against the perimeter's ``write`` branch patterns, and every read against its
  ``read_deny`` path patterns (listings leave denied paths out);
* on a merge into ``main``: requires the write right on ``production/main``, evaluates every
  gate on exactly the source commit (:mod:`store.policy.gates`), and, when the merge changes
  ``_flowlake/policy.toml``, requires the new file to parse and the caller to act in the
  ``production`` perimeter; the same rights apply to a revert on ``main``;
* records the perimeter and principal in the metadata of every commit and merge it makes,
  and appends promotions, reverts, policy changes, gate outcomes and token use to the audit
  chain (:mod:`store.policy.ledger`), anchoring the chain's head in each promotion's commit.

The policy and the gates are always read from ``main``'s head at the time of the check, never
from the branch being merged. A lake whose ``main`` has no policy behaves as before: nothing is
checked except that a policy file merged into ``main`` must be valid.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, BinaryIO, cast

from store.backend import Backend
from store.errors import (
    GateFailedError,
    InvalidArgumentError,
    ObjectNotFoundError,
    PermissionDeniedError,
    RefNotFoundError,
    StoreError,
)
from store.model import Commit, MergeStrategy, ObjectInfo
from store.names import BranchName
from store.policy import tokens
from store.policy.ledger import Ledger, is_admin_branch
from store.policy.model import POLICY_PATH, Perimeter, Policy, expand_principal, glob_matches
from store.policy.parse import parse_policy

ENV_PERIMETER = "FLOWLAKE_PERIMETER"
ENV_TOKEN = "FLOWLAKE_TOKEN"
DEFAULT_PERIMETER = "staging"
PRODUCTION_PERIMETER = "production"
#: Commit metadata keys the policy layer writes.
#: Commit metadata keys the policy layer writes; callers may not set keys with this prefix
#: (so no commit can claim another author or forge an audit anchor).
META_PREFIX = "flowlake-policy."
META_PERIMETER = META_PREFIX + "perimeter"
META_PRINCIPAL = META_PREFIX + "principal"
META_AUDIT_SEQ = META_PREFIX + "audit.seq"
META_AUDIT_HASH = META_PREFIX + "audit.hash"


@dataclass(frozen=True)
class Identity:
    """Who acts and where.

    Attributes:
        principal: ``user:<login>`` or ``token:<name>``.
        perimeter: the perimeter acted in; None on a lake without a policy when none was asked.
        scopes: a token's scopes (:data:`store.policy.tokens.SCOPES`); empty: no limit beyond
            the perimeter's (people, and tokens made without ``--scope``).
    """

    principal: str
    perimeter: str | None
    scopes: tuple[str, ...] = ()


def read_policy(backend: Backend, ref: str, *, strict: bool = False) -> Policy | None:
    """The policy held at ``ref`` (a branch or commit), or None when it has none.

    ``strict``: as :func:`~store.policy.parse.parse_policy`'s; a policy change is read strictly,
    the one in force leniently (so a lake whose policy predates a check still opens).

    Raises:
        PolicyError: the file there is invalid (it names the line).
    """
    try:
        with backend.open_read(ref, POLICY_PATH) as stream:
            return parse_policy(stream.read(), strict=strict)
    except (ObjectNotFoundError, RefNotFoundError):
        return None


def backend_principal(backend: Backend, user: str) -> str:
    """``user:<login>``: the lakeFS user the credentials belong to on lakeFS, else ``user``."""
    sdk = getattr(backend, "_sdk", None)
    if sdk is not None:
        try:
            return f"user:{sdk.auth_api.get_current_user().user.id}"
        except Exception:  # noqa: BLE001 - an old server or a key without auth:ReadUser
            return f"user:{user}"
    return f"user:{user}"


def policy_view(
    backend: Backend,
    user: str,
    perimeter: str | None = None,
    token: str | None = None,
    clock: Callable[[], datetime] | None = None,
    location: str = "",
) -> Backend:
    """Authenticate the caller and wrap ``backend`` in the policy's enforcement point.

    Args:
        backend: the lake's backend.
        user: the login (``store.open(user=)`` / ``FLOWLAKE_USER`` / the OS user).
        perimeter: the perimeter to act in (default ``$FLOWLAKE_PERIMETER``, else the token's,
            else ``staging`` on a lake with a policy).
        token: a machine token's secret (default ``$FLOWLAKE_TOKEN``).
        clock: the current time (UTC), for tests.
        location: the lake's location (for tracking's caches when gates read runs).

    Raises:
        TokenError: the token is malformed, unknown, revoked, expired or for another perimeter
            (the message names the token, never its secret).
        PermissionDeniedError: the principal may not act in the perimeter.
        InvalidArgumentError: the perimeter is not one of the policy's, or one is asked for
            (``perimeter=``, not ``$FLOWLAKE_PERIMETER``, which is ignored there) on a lake
            without a policy.
        PolicyError: ``main``'s policy file is invalid.
    """
    asked = perimeter
    perimeter = perimeter or os.environ.get(ENV_PERIMETER) or None
    token = token or os.environ.get(ENV_TOKEN) or None
    ledger = Ledger(backend, clock)
    policy = read_policy(backend, backend.default_branch)
    if asked and policy is None and token is None:
        raise InvalidArgumentError(
            f"perimeter {asked!r} does not exist: the lake at {location or 'this location'} "
            "has no policy (perimeters are defined in _flowlake/policy.toml on main; "
            "docs/policy.md); open it without a perimeter"
        )
    if policy is None and token is None:
        perimeter = None  # an ambient $FLOWLAKE_PERIMETER means nothing here
    scopes: tuple[str, ...] = ()
    if token is not None:
        from store.errors import TokenError

        record = tokens.authenticate(ledger.tokens(), token, ledger.now())
        if perimeter is not None and perimeter != record.perimeter:
            raise TokenError(
                f"token {record.name!r} is for perimeter {record.perimeter!r}, not {perimeter!r}"
            )
        perimeter = record.perimeter
        principal = record.principal
        scopes = record.scopes
        ledger.update_token(replace(record, last_used=ledger.now()))
        ledger.append(principal, "token-use", {"token": record.name, "perimeter": perimeter})
    elif policy is not None:
        principal = backend_principal(backend, user)
    else:
        principal = f"user:{user}"
    if policy is not None:
        perimeter = perimeter or DEFAULT_PERIMETER
        _admitted(policy, perimeter, principal)
    view = PolicyBackend(backend, Identity(principal, perimeter, scopes), ledger, location)
    return cast(Backend, view)


def perimeter_of(backend: object) -> str | None:
    """The perimeter a lake's backend (``Lake.backend``) was opened in, or None when none was
    asked on a lake without a policy (or the lake was not opened with ``store.open``)."""
    view = getattr(backend, "_inner", backend)
    return view.identity.perimeter if isinstance(view, PolicyBackend) else None


def job_identity(backend: object) -> Identity | None:
    """Who a compute job submitted through a lake (``Lake.backend``) acts as when it reopens it.

    The job is given the principal and perimeter (``compute.JobSpec``); a token travels only
    in the job's environment (``FLOWLAKE_TOKEN``, which every backend passes on), never in a
    file, so a lake opened with ``token=`` needs the same token in ``FLOWLAKE_TOKEN``.

    Returns:
        The lake's :class:`Identity`, or None for a lake not opened with ``store.open``.

    Raises:
        TokenError: the lake acts as a token that ``FLOWLAKE_TOKEN`` does not hold (names the
            token, never a secret).
    """
    view = getattr(backend, "_inner", backend)
    if not isinstance(view, PolicyBackend):
        return None
    identity = view.identity
    name = identity.principal.removeprefix("token:")
    if name != identity.principal:
        from store.errors import TokenError

        secret = os.environ.get(ENV_TOKEN) or ""
        if not hmac.compare_digest(tokens.digest(secret), view.ledger.token(name).digest):
            raise TokenError(
                f"this lake acts as token {name!r}, which a job receives only through "
                f"${ENV_TOKEN}: set it to that token in the submitting process"
            )
    return identity


def check_job_identity(backend: object, principal: str | None, perimeter: str | None) -> None:
    """Refuse a job's lake that reopened as someone other than its submitter's lake acted as
    (only checked when that lake was opened in a perimeter, i.e. ``main`` held a policy).

    Raises:
        PermissionDeniedError: the principal or perimeter differ (e.g. other lakeFS
            credentials, or another ``FLOWLAKE_TOKEN``, in the job's environment).
    """
    view = getattr(backend, "_inner", backend)
    found = view.identity if isinstance(view, PolicyBackend) else None
    got = (found.principal, found.perimeter) if found is not None else (None, None)
    if perimeter is not None and got != (principal, perimeter):
        raise PermissionDeniedError(
            f"the job was submitted as {principal} in perimeter {perimeter!r} but its "
            f"environment opens the lake as {got[0]} in perimeter {got[1]!r}"
        )


def _admitted(policy: Policy, perimeter: str, principal: str) -> Perimeter:
    found = policy.perimeters.get(perimeter)
    if found is None:
        raise InvalidArgumentError(
            f"unknown perimeter {perimeter!r}; the policy defines "
            + ", ".join(sorted(policy.perimeters))
        )
    if not policy.allows(found.principals, principal):
        raise PermissionDeniedError(
            f"{principal} may not act in perimeter {perimeter!r} "
            f"(policy line {found.line}: principals = {list(found.principals)})"
        )
    return found


def branch_label(backend_name: str) -> str:
    """A branch as write patterns name it: ``<namespace>/<branch>`` (``production/main``)."""
    name = BranchName.from_backend(backend_name)
    return f"{name.namespace}/{name.short}"


class PolicyBackend:
    """A backend view that enforces the policy on ``main`` (see the module docstring).

    Methods not listed here are passed through unchanged.
    """

    def __init__(
        self, inner: Backend, identity: Identity, ledger: Ledger, location: str = ""
    ) -> None:
        self._inner = inner
        self.location = location
        self.identity = identity
        self.ledger = ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    # -- the checks ------------------------------------------------------------------------------

    def policy(self) -> Policy | None:
        """The policy on ``main``'s head now."""
        return read_policy(self._inner, self._inner.default_branch)

    def _perimeter(self, policy: Policy) -> Perimeter:
        return _admitted(
            policy, self.identity.perimeter or DEFAULT_PERIMETER, self.identity.principal
        )

    def check_write(
        self, branch: str, what: str = "write to", *, fresh: bool = False
    ) -> Policy | None:
        """Refuse a change to ``branch`` (a backend name) the caller has no right to; returns
        the policy checked against (``fresh``: read from ``main`` now, else as opened).

        Raises:
            PermissionDeniedError: the admin branch, or no write pattern matches.
        """
        if is_admin_branch(branch):
            raise PermissionDeniedError(
                f"branch {branch!r} is flowlake's internal admin branch; it changes only "
                "through 'flowlake token' and the audit log"
            )
        main = branch == self._inner.default_branch
        self.require_scope("promote" if main else "write", f"{what} {branch_label(branch)}")
        policy = self.policy() if fresh else self._read_policy
        if policy is None:
            return None
        perimeter = self._perimeter(policy)
        label = branch_label(branch)
        patterns = (expand_principal(p, self.identity.principal) for p in perimeter.write)
        if not any(p is not None and glob_matches(p, label) for p in patterns):
            raise PermissionDeniedError(
                f"{self.identity.principal} in perimeter {perimeter.name!r} may not {what} "
                f"{label} (policy line {perimeter.line_of('write')}: "
                f"write = {list(perimeter.write)})"
            )
        return policy

    def require_scope(self, scope: str, what: str) -> None:
        """Refuse what a token's scopes do not cover (people have no scopes).

        Raises:
            PermissionDeniedError: names the missing scope and the token's scopes.
        """
        if not tokens.allows(self.identity.scopes, scope):
            raise PermissionDeniedError(
                f"{self.identity.principal} lacks the token scope {scope!r} needed to {what} "
                f"(its scopes: {', '.join(self.identity.scopes)})"
            )

    @functools.cached_property
    def _read_policy(self) -> Policy | None:
        # Plain writes and reads are checked against the policy as it was when the lake was
        # opened (one read of main per handle, not one per object); merges and reverts into
        # main read it afresh.
        return self.policy()

    def _denied(self, path: str) -> str | None:
        policy = self._read_policy
        if policy is None:
            return None
        perimeter = policy.perimeters.get(self.identity.perimeter or DEFAULT_PERIMETER)
        if perimeter is None:
            return None
        for pattern in perimeter.read_deny:
            if glob_matches(pattern, path):
                return pattern
        return None

    def check_read(self, path: str) -> None:
        """Raises: PermissionDeniedError when ``path`` is not readable from this perimeter."""
        pattern = self._denied(path)
        if pattern is not None:
            raise PermissionDeniedError(
                f"{path!r} is not readable from perimeter {self.identity.perimeter!r} "
                f"(read_deny {pattern!r})"
            )

    def _metadata(self, metadata: dict[str, str]) -> dict[str, str]:
        forged = sorted(k for k in metadata if k.startswith(META_PREFIX))
        if forged:
            raise InvalidArgumentError(
                f"commit metadata keys {forged} use the prefix {META_PREFIX!r}, kept for the "
                "policy layer"
            )
        if self.identity.perimeter is None:
            return metadata
        return {
            **metadata,
            META_PERIMETER: self.identity.perimeter,
            META_PRINCIPAL: self.identity.principal,
        }

    def _committer(self, committer: str) -> str:
        """Who a commit is by: the token's principal (``token:ci``) when a machine token acts,
        whatever login the process runs under; else the committer given (the lake's user)."""
        principal = self.identity.principal
        return principal if principal.startswith("token:") else committer

    # -- reads -----------------------------------------------------------------------------------

    def stat(self, ref: str, path: str) -> ObjectInfo:
        self.check_read(path)
        return self._inner.stat(ref, path)

    def open_read(self, ref: str, path: str) -> BinaryIO:
        self.check_read(path)
        return self._inner.open_read(ref, path)

    def local_path(self, ref: str, path: str) -> str | None:
        self.check_read(path)
        return self._inner.local_path(ref, path)

    def list_objects(self, ref: str, prefix: str = "") -> Iterator[ObjectInfo]:
        if self._read_policy is None:
            return self._inner.list_objects(ref, prefix)
        return (o for o in self._inner.list_objects(ref, prefix) if self._denied(o.path) is None)

    # -- writes ----------------------------------------------------------------------------------

    def create_branch(self, name: str, source_commit: str) -> None:
        self.check_write(name, "create branch")
        self._inner.create_branch(name, source_commit)

    def create_branch_with(
        self, name: str, source_commit: str, items: Sequence[tuple[str, bytes]]
    ) -> None:
        self.check_write(name, "create branch")
        self._inner.create_branch_with(name, source_commit, items)

    def delete_branch(self, name: str) -> None:
        self.check_write(name, "delete branch")
        self._inner.delete_branch(name)

    def protect_branch(self, name: str) -> None:
        self.check_write(name, "protect branch")
        self._inner.protect_branch(name)

    def create_tag(self, name: str, commit_id: str) -> None:
        self._check_tag(name)
        self._inner.create_tag(name, commit_id)

    def delete_tag(self, name: str) -> None:
        self._check_tag(name)
        self._inner.delete_tag(name)

    def _check_tag(self, name: str) -> None:
        # Tags are global and name releases: tagging needs the right to write production.
        if self._read_policy is not None:
            self.check_write(self._inner.default_branch, f"tag ({name!r}) as")

    def put(self, branch: str, path: str, source: BinaryIO) -> ObjectInfo:
        self.check_write(branch)
        return self._inner.put(branch, path, source)

    def put_many(self, branch: str, items: Iterable[tuple[str, bytes]]) -> int:
        self.check_write(branch)
        return self._inner.put_many(branch, items)

    def delete(self, branch: str, paths: Iterable[str]) -> None:
        self.check_write(branch)
        self._inner.delete(branch, paths)

    def reset(self, branch: str) -> None:
        self.check_write(branch)
        self._inner.reset(branch)

    def commit(self, branch: str, message: str, metadata: dict[str, str], committer: str) -> Commit:
        self.check_write(branch, "commit to")
        return self._inner.commit(
            branch, message, self._metadata(metadata), self._committer(committer)
        )

    def commit_writes(
        self,
        branch: str,
        items: Sequence[tuple[str, bytes]],
        message: str,
        metadata: dict[str, str],
        committer: str,
    ) -> Commit:
        self.check_write(branch, "commit to")
        return self._inner.commit_writes(
            branch, items, message, self._metadata(metadata), self._committer(committer)
        )

    def commit_writes_merged(
        self,
        branch: str,
        items: Sequence[tuple[str, bytes]],
        message: str,
        metadata: dict[str, str],
        committer: str,
        dest_branch: str,
        merge_message: str,
        merge_metadata: dict[str, str],
    ) -> tuple[Commit, Commit | None]:
        self.check_write(branch, "commit to")
        metadata, committer = self._metadata(metadata), self._committer(committer)
        if dest_branch == self._inner.default_branch:
            # A merge into main passes its gates in merge(): only the commit is made here.
            return self._inner.commit_writes(branch, items, message, metadata, committer), None
        try:
            # The checks merge() makes for a branch other than main.
            self.check_write(dest_branch, "merge into", fresh=True)
            merge_metadata = self._metadata(merge_metadata)
        except StoreError:
            # The commit is still made; the merge the caller makes next reports the refusal.
            return self._inner.commit_writes(branch, items, message, metadata, committer), None
        return self._inner.commit_writes_merged(
            branch, items, message, metadata, committer, dest_branch, merge_message, merge_metadata
        )

    def merge(
        self,
        source: str,
        dest_branch: str,
        strategy: MergeStrategy | None,
        message: str,
        metadata: dict[str, str],
        committer: str,
        guard: Collection[str] = (),
    ) -> Commit:
        policy = self.check_write(dest_branch, "merge into", fresh=True)
        metadata = self._metadata(metadata)
        committer = self._committer(committer)
        if dest_branch != self._inner.default_branch:
            return self._inner.merge(
                source, dest_branch, strategy, message, metadata, committer, guard
            )
        # Pin the source: the gates hold for this commit, so exactly this commit is merged.
        source_commit = self._inner.resolve(source)
        dest_head = self._inner.branch_head(dest_branch)
        base = self._inner.merge_base(source_commit, dest_head)
        changes_policy = _policy_changed(self._inner, base, source_commit)
        if changes_policy:
            self._check_policy_change(policy, source_commit, "merge")
        # Only here, past every check, does a merge into main carry the gate attestation that
        # lakeFS's gate hook asks for (store/backends/lakefs/gatehook.py).
        merge_attested = cast(
            Callable[..., Commit], getattr(self._inner, "merge_attested", self._inner.merge)
        )
        if policy is None and not changes_policy:
            return merge_attested(
                source_commit, dest_branch, strategy, message, metadata, committer, guard
            )

        def merge(anchor: dict[str, str]) -> Commit:
            return merge_attested(
                source_commit,
                dest_branch,
                strategy,
                message,
                {**metadata, **anchor},
                committer,
                guard,
            )

        if policy is None:  # the first policy: nothing to gate, but audited like later changes
            actor = self.identity.principal
            if actor.startswith("user:"):  # no policy yet, so the lakeFS user was not asked
                actor = backend_principal(self._inner, actor.removeprefix("user:"))
            return self._audited_merge(actor, "policy-change", source_commit, dest_head, merge)
        from store.policy.gates import evaluate

        outcomes = evaluate(
            policy, self._inner, self.ledger, source_commit, self.identity, self.location
        )
        failed = [o for o in outcomes if not o.passed]
        details: dict[str, str | int | bool] = {
            "source": source_commit,
            "into": dest_branch,
            "perimeter": self.identity.perimeter or "",
            "passed": not failed,
        }
        for number, outcome in enumerate(outcomes, start=1):
            details[f"gate.{number}"] = outcome.summary()
        self.ledger.append(self.identity.principal, "gate", details)
        if failed:
            raise GateFailedError(
                f"promotion of {source_commit[:12]} into {dest_branch} refused: "
                + "; ".join(o.summary() for o in failed),
                [o.summary() for o in failed],
            )
        action = "policy-change" if changes_policy else "promote"
        return self._audited_merge(self.identity.principal, action, source_commit, dest_head, merge)

    def _audited_merge(
        self,
        actor: str,
        action: str,
        source_commit: str,
        dest_head: str,
        merge: Callable[[dict[str, str]], Commit],
    ) -> Commit:
        """Append ``action`` to the audit chain, anchor the chain's head in the merge commit's
        metadata, merge, and record the merge (or its failure)."""
        into = self._inner.default_branch
        entry = self.ledger.append(
            actor, action, {"source": source_commit, "into": into, "base": dest_head}
        )
        try:
            merged = merge({META_AUDIT_SEQ: str(entry.seq), META_AUDIT_HASH: entry.hash})
        except StoreError as exc:
            self.ledger.append(
                actor, f"{action}-failed", {"source": source_commit, "error": type(exc).__name__}
            )
            raise
        self.ledger.append(actor, "merge", {"source": source_commit, "commit": merged.id})
        return merged

    def audited_change_of_main(self, action: str, change: Callable[[dict[str, str]], str]) -> str:
        """Make a change of ``main`` that does not go through :meth:`merge` (the lakeFS gate
        hook's install) audited like a policy change: its entry (actor, ``main``'s head before)
        is appended first and anchored in the change's commit metadata, then a ``merge`` entry,
        or ``<action>-failed`` when the change raised.

        Args:
            action: the audit action, e.g. ``gate-hook-install``.
            change: makes the change given the metadata its commit must carry (perimeter,
                principal and the audit anchor); returns the new commit's id.

        Returns:
            What ``change`` returned.
        """
        actor = self.identity.principal
        if self.policy() is None and actor.startswith("user:"):  # as for the first policy
            actor = backend_principal(self._inner, actor.removeprefix("user:"))
        into = self._inner.default_branch
        entry = self.ledger.append(
            actor, action, {"into": into, "base": self._inner.branch_head(into)}
        )
        anchor = {META_AUDIT_SEQ: str(entry.seq), META_AUDIT_HASH: entry.hash}
        try:
            commit = change({**self._metadata({}), **anchor})
        except BaseException as exc:
            self.ledger.append(actor, f"{action}-failed", {"error": type(exc).__name__})
            raise
        self.ledger.append(actor, "merge", {"action": action, "commit": commit})
        return commit

    def revert(self, branch: str, commit_id: str, committer: str) -> Commit:
        policy = self.check_write(branch, "revert on", fresh=True)
        committer = self._committer(committer)
        if branch != self._inner.default_branch:
            return self._inner.revert(branch, commit_id, committer)
        parents = self._inner.get_commit(commit_id).parents
        changes_policy = _policy_changed(self._inner, parents[0] if parents else None, commit_id)
        if changes_policy and policy is not None:
            self._check_policy_change(policy, None, "revert")
        revert_attested = cast(
            Callable[..., Commit], getattr(self._inner, "revert_attested", self._inner.revert)
        )
        reverted = revert_attested(branch, commit_id, committer)
        if policy is not None:
            self.ledger.append(
                self.identity.principal,
                "revert",
                {"branch": branch, "reverted": commit_id, "commit": reverted.id},
            )
        return reverted

    def _check_policy_change(self, policy: Policy | None, source: str | None, how: str) -> None:
        """A change of the policy file: only production principals (tokens: with the ``admin``
        scope), and only to a valid file."""
        self.require_scope("admin", f"{how} a change of {POLICY_PATH} into main")
        if policy is not None and self.identity.perimeter != PRODUCTION_PERIMETER:
            raise PermissionDeniedError(
                f"a {how} that changes {POLICY_PATH} needs the production perimeter; "
                f"{self.identity.principal} acts in {self.identity.perimeter!r}"
            )
        if source is not None:
            new = read_policy(self._inner, source)
            if new is None and policy is not None:
                raise PermissionDeniedError(f"a {how} may not delete {POLICY_PATH} from main")


def _policy_changed(backend: Backend, base: str | None, commit: str) -> bool:
    """Whether ``commit`` holds another policy file than ``base`` (parsing the new one).

    Raises:
        PolicyError: the new policy file is invalid.
    """

    def checksum(ref: str | None) -> str | None:
        if ref is None:
            return None
        try:
            return backend.stat(ref, POLICY_PATH).checksum
        except ObjectNotFoundError:
            return None

    if checksum(base) == checksum(commit):
        return False
    read_policy(backend, commit, strict=True)  # raises PolicyError naming the line
    return True
