"""The lakeFS backend: the :class:`store.backend.Backend` contract over a lakeFS repository.

One flowlake lake is one lakeFS repository; backend branch names are lakeFS branch names and
commit ids are lakeFS commit ids (64 hex digits). Every SDK or HTTP failure is translated in
:mod:`store.backends.lakefs.errors`; object bytes stream through
:mod:`store.backends.lakefs.transfer`; branch protection lives in
:mod:`store.backends.lakefs.protection`.

Commit metadata: flowlake's ``committer`` is kept under :data:`COMMITTER_KEY` (lakeFS records
the authenticated user as its own committer), an empty message under :data:`EMPTY_MESSAGE_KEY`
(lakeFS requires a message), and lakeFS adds ``.lakefs.merge.strategy`` to merge commits. All of
these are stripped on read, so a commit's message and metadata come back as given.
"""

from __future__ import annotations

try:
    import lakefs
    import lakefs_sdk
except ImportError as exc:  # pragma: no cover - depends on the installation
    from store.errors import NotInstalledError

    raise NotInstalledError(
        "the lakeFS backend needs the 'lakefs' and 'lakefs-sdk' packages: "
        "pip install 'flowlake[lakefs]'"
    ) from exc

import io
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar

from store import scratch
from store.backend import CAP_LOCAL_PATHS, Backend
from store.backends.lakefs import gatehook, protection, transfer
from store.backends.lakefs.config import LakeFSSettings, resolve_settings
from store.backends.lakefs.errors import LakeFSError, about_branch, boundary, from_status
from store.errors import (
    AlreadyExistsError,
    AmbiguousNameError,
    AmbiguousRefError,
    BranchNotFoundError,
    ConflictError,
    InvalidArgumentError,
    LakeClosedError,
    LakeNotFoundError,
    NotFoundError,
    ObjectNotFoundError,
    ProtectedBranchError,
    RefNotFoundError,
    StoreError,
)
from store.model import (
    MERGE_STRATEGIES,
    RESERVED_METADATA_PREFIXES,
    Change,
    ChangeKind,
    Commit,
    MergeStrategy,
    ObjectInfo,
)
from store.names import MIN_COMMIT_PREFIX

# The SDK's models are pydantic v1 classes: without pydantic's mypy plugin, mypy takes their
# optional fields for required ones, hence the ``type: ignore[call-arg]`` on model calls.

COMMITTER_KEY = "flowlake.committer"
#: Object user-metadata key of the token :meth:`LakeFSBackend.merge` puts on guarded paths.
GUARD_KEY = "flowlake-guard"
EMPTY_MESSAGE_KEY = "flowlake.empty-message"
#: The committer of commits no one made through flowlake or as a lakeFS user (the first one).
SYSTEM_COMMITTER = "flowlake"
_EMPTY_MESSAGE_PLACEHOLDER = "(no message)"
PAGE = 1000
#: lakeFS's DeleteObjects limit per call.
DELETE_BATCH = 1000
#: Parallel uploads in put_many / existence checks in delete.
WORKERS = 8
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEX = re.compile(r"^[0-9a-f]{1,64}$")
_CHANGE_KINDS = {"added": ChangeKind.ADDED, "removed": ChangeKind.REMOVED}

T = TypeVar("T")


class LakeFSBackend(Backend):
    """A lake stored in one lakeFS repository.

    Args:
        client: a logged-in ``lakefs.Client`` (its ``sdk_client`` does the calls).
        repository: the repository name.
        gateway_paths: make :meth:`local_path` return ``s3://<repo>/<ref>/<path>`` URLs for the
            lakeFS S3 gateway; only useful to callers that configured DuckDB / fsspec for that
            gateway (see :meth:`s3_storage_options`).
        verify_reads: check streamed bytes against lakeFS's MD5 checksum at end of stream.
    """

    def __init__(
        self,
        client: lakefs.Client,
        repository: str,
        *,
        gateway_paths: bool = False,
        verify_reads: bool = True,
    ) -> None:
        self._client = client
        self._sdk = client.sdk_client
        self._api_client = self._sdk.objects_api.api_client
        self.repository = repository
        self._gateway_paths = gateway_paths
        self._verify_reads = verify_reads
        self.capabilities = frozenset({CAP_LOCAL_PATHS}) if gateway_paths else frozenset()

    @classmethod
    def from_config(
        cls,
        repository: str,
        endpoint: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create: bool = False,
        storage_namespace: str | None = None,
        **options: Any,
    ) -> LakeFSBackend:
        """Connect with explicit settings, else ``LAKECTL_*`` variables, else ``~/.lakectl.yaml``.

        Args:
            repository: the repository holding the lake.
            endpoint, access_key_id, secret_access_key: see :func:`config.resolve_settings`.
            create: create the repository (default branch ``main``) if it does not exist.
            storage_namespace: where lakeFS stores the new repository's data
                (``s3://bucket/prefix``); required when ``create`` has to create it.
            options: passed to the constructor (``gateway_paths``, ``verify_reads``).

        Raises:
            InvalidArgumentError: settings missing, or ``create`` without a storage namespace.
            LakeNotFoundError: the repository does not exist and ``create`` is false.
            BackendUnavailableError: lakeFS cannot be reached.
        """
        settings = resolve_settings(endpoint, access_key_id, secret_access_key)
        client = lakefs.Client(
            host=settings.endpoint,
            username=settings.access_key_id,
            password=settings.secret_access_key,
        )
        backend = cls(client, repository, **options)
        backend._open(create, storage_namespace)
        return backend

    def _open(self, create: bool, storage_namespace: str | None) -> None:
        try:
            with boundary(LakeNotFoundError):
                self._sdk.repositories_api.get_repository(self.repository)
            return
        except LakeNotFoundError:
            if not create:
                raise LakeNotFoundError(
                    f"no lakeFS repository {self.repository!r} (pass create=True to create it)"
                ) from None
        if not storage_namespace:
            raise InvalidArgumentError("creating a lakeFS repository needs a storage_namespace")
        creation = lakefs_sdk.RepositoryCreation(  # type: ignore[call-arg]
            name=self.repository,
            storage_namespace=storage_namespace,
            default_branch=self.default_branch,
        )
        with boundary():
            self._sdk.repositories_api.create_repository(creation)
        # Like the embedded backend, a new lake starts with a protected main. No write has
        # touched the repository yet, so lakeFS enforces the rule at once (no cache to expire).
        protection.protect(self._sdk, self.repository, self.default_branch)

    @property
    def settings(self) -> LakeFSSettings:
        """The endpoint and keys this backend talks to lakeFS with."""
        conf = self._client.config
        endpoint = conf.host[: -len("/api/v1")] if conf.host.endswith("/api/v1") else conf.host
        return LakeFSSettings(endpoint, conf.username or "", conf.password or "")

    # -- refs -----------------------------------------------------------------------------------

    def create_branch(self, name: str, source_commit: str) -> None:
        creation = lakefs_sdk.BranchCreation(name=name, source=source_commit)  # type: ignore[call-arg]
        try:
            with boundary(RefNotFoundError, f"branch {name!r} from {source_commit[:12]}"):
                self._sdk.branches_api.create_branch(self.repository, creation)
        except ConflictError as exc:
            # lakeFS answers "conflict found" for a branch named like a tag or a commit id.
            raise AmbiguousNameError(f"another ref answers to {name!r} ({exc})") from exc

    def delete_branch(self, name: str) -> None:
        # lakeFS protection rules do not block deleting a branch; the contract does.
        self.branch_head(name)
        if name in self.protected_branches():
            raise ProtectedBranchError(f"branch {name!r} is protected and cannot be deleted")
        with boundary(BranchNotFoundError, f"branch {name!r}"):
            self._sdk.branches_api.delete_branch(self.repository, name)

    def list_branches(self) -> dict[str, str]:
        api = self._sdk.branches_api
        refs = _paginate(lambda after: api.list_branches(self.repository, after=after, amount=PAGE))
        return {ref.id: ref.commit_id for ref in refs}

    def branch_head(self, name: str) -> str:
        with about_branch(name), boundary(BranchNotFoundError):
            return str(self._sdk.branches_api.get_branch(self.repository, name).commit_id)

    def protect_branch(self, name: str) -> None:
        self.branch_head(name)
        protection.protect(self._sdk, self.repository, name)

    def protected_branches(self) -> set[str]:
        patterns = protection.patterns(self._sdk, self.repository)
        return {b for b in self.list_branches() if protection.matches_any(b, patterns)}

    def create_tag(self, name: str, commit_id: str) -> None:
        creation = lakefs_sdk.TagCreation(id=name, ref=commit_id)
        try:
            with boundary(RefNotFoundError, f"tag {name!r}"):
                self._sdk.tags_api.create_tag(self.repository, creation)
        except AlreadyExistsError as exc:
            raise AlreadyExistsError(f"tag {name!r} already exists") from exc
        except ConflictError as exc:
            # lakeFS answers "conflict found" for a tag named like a branch or a commit id.
            raise AmbiguousNameError(f"another ref answers to {name!r} ({exc})") from exc

    def delete_tag(self, name: str) -> None:
        try:
            with boundary(RefNotFoundError):
                self._sdk.tags_api.delete_tag(self.repository, name)
        except RefNotFoundError as exc:
            raise RefNotFoundError(f"tag {name!r} does not exist") from exc

    def list_tags(self) -> dict[str, str]:
        api = self._sdk.tags_api
        refs = _paginate(lambda after: api.list_tags(self.repository, after=after, amount=PAGE))
        return {ref.id: ref.commit_id for ref in refs}

    def resolve(self, ref: str) -> str:
        # lakeFS would also accept its own ref expressions (main~1, main@, main$); flowlake
        # parses those above the backend, so here they are simply names that do not exist.
        if not isinstance(ref, str) or not _REF.match(ref) or ".." in ref:
            raise RefNotFoundError(f"no branch, tag or commit named {ref!r}")
        if _HEX.match(ref) and len(ref) < MIN_COMMIT_PREFIX:
            # lakeFS takes 2 or 3 hex digits as a commit id prefix; flowlake's prefixes have
            # at least MIN_COMMIT_PREFIX digits on every backend, so this is a name or nothing.
            return self._named_commit(ref)
        try:
            with boundary(RefNotFoundError):
                return str(self._sdk.commits_api.get_commit(self.repository, ref).id)
        except RefNotFoundError:
            if not _HEX.match(ref):
                raise
        # lakeFS answers "not found" for an ambiguous prefix too; tell the two apart.
        matches = self._reachable_commits_with_prefix(ref)
        if len(matches) > 1:
            shown = ", ".join(sorted(matches)[:5])
            raise AmbiguousRefError(f"commit id prefix {ref!r} matches several commits: {shown}")
        if not matches:
            raise RefNotFoundError(f"no branch, tag or commit named {ref!r}")
        return matches.pop()

    def _named_commit(self, name: str) -> str:
        """The head of branch ``name``, else the commit of tag ``name``."""
        try:
            return self.branch_head(name)
        except BranchNotFoundError:
            pass
        with boundary(RefNotFoundError, f"no branch, tag or commit named {name!r}"):
            return str(self._sdk.tags_api.get_tag(self.repository, name).commit_id)

    def _reachable_commits_with_prefix(self, prefix: str) -> set[str]:
        # Only on the error path: walks the history of every branch and tag (a head already
        # seen in another history adds nothing; lakeFS's log order allows no earlier cut-off).
        heads = set(self.list_branches().values()) | set(self.list_tags().values())
        seen: set[str] = set()
        for head in sorted(heads):
            if head not in seen:
                seen.update(commit.id for commit in self._raw_log(head))
        return {commit_id for commit_id in seen if commit_id.startswith(prefix)}

    def get_commit(self, commit_id: str) -> Commit:
        with boundary(RefNotFoundError, f"commit {commit_id}"):
            raw = self._sdk.commits_api.get_commit(self.repository, commit_id)
        if raw.id != commit_id:  # lakeFS resolved a branch, tag or prefix
            raise RefNotFoundError(f"no commit with id {commit_id!r}")
        return _to_commit(raw)

    def log(self, commit_id: str) -> Iterator[Commit]:
        for raw in self._raw_log(commit_id):
            yield _to_commit(raw)

    def _raw_log(self, ref: str) -> Iterator[Any]:
        api = self._sdk.refs_api
        yield from _paginate(
            lambda after: api.log_commits(self.repository, ref, after=after, amount=PAGE)
        )

    def merge_base(self, left: str, right: str) -> str | None:
        try:
            with boundary(RefNotFoundError):
                result = self._sdk.refs_api.find_merge_base(self.repository, left, right)
        except LakeFSError as exc:
            if "no merge base" in str(exc).lower():
                return None
            raise
        return str(result.base_commit_id) or None

    # -- objects --------------------------------------------------------------------------------

    def stat(self, ref: str, path: str) -> ObjectInfo:
        try:
            with boundary(ObjectNotFoundError, f"{path!r} at {ref!r}"):
                stats = self._sdk.objects_api.stat_object(self.repository, ref, path)
        except ObjectNotFoundError:
            self.resolve(ref)  # raises RefNotFoundError when the ref is what is missing
            raise ObjectNotFoundError(f"no object {path!r} in {ref!r}") from None
        return _to_info(stats)

    def open_read(self, ref: str, path: str) -> BinaryIO:
        try:
            return transfer.download(
                self._api_client, self.repository, ref, path, self._verify_reads
            )
        except ObjectNotFoundError:
            self.resolve(ref)  # raises RefNotFoundError when the ref is what is missing
            raise ObjectNotFoundError(f"no object {path!r} in {ref!r}") from None

    def read_many(self, ref: str, paths: Sequence[str]) -> dict[str, bytes]:
        # lakeFS has no multi-object read; the GETs overlap instead, WORKERS in flight over the
        # SDK's connection pool (kept alive), each checked against lakeFS's MD5 like open_read.
        wanted = list(dict.fromkeys(paths))
        if len(wanted) <= 1:
            return super().read_many(ref, wanted)

        def one(path: str) -> bytes:
            with self.open_read(ref, path) as stream:
                return stream.read()

        with ThreadPoolExecutor(min(WORKERS, len(wanted))) as pool:
            return dict(zip(wanted, pool.map(one, wanted), strict=True))

    def list_objects(self, ref: str, prefix: str = "") -> Iterator[ObjectInfo]:
        api = self._sdk.objects_api

        def page(after: str) -> Any:
            return api.list_objects(
                self.repository, ref, after=after, amount=PAGE, prefix=prefix or None
            )

        for stats in _paginate(page):
            if stats.path_type == "object":
                yield _to_info(stats)

    def put(self, branch: str, path: str, source: BinaryIO) -> ObjectInfo:
        with about_branch(branch):
            stats = transfer.upload(self._api_client, self.repository, branch, path, source)
        return _to_info(lakefs_sdk.ObjectStats.from_dict(stats))

    def put_many(self, branch: str, items: Iterable[tuple[str, bytes]]) -> int:
        # lakeFS has no multi-object upload; small objects go up as parallel requests.
        def one(item: tuple[str, bytes]) -> None:
            self.put(branch, item[0], io.BytesIO(item[1]))

        count = 0
        with ThreadPoolExecutor(WORKERS) as pool:
            for batch in _batched(items, WORKERS * 8):
                list(pool.map(one, batch))
                count += len(batch)
        return count

    def delete(self, branch: str, paths: Iterable[str]) -> None:
        with about_branch(branch):
            self._delete(branch, sorted(set(paths)))

    def _delete(self, branch: str, wanted: list[str]) -> None:
        self.branch_head(branch)
        # lakeFS deletes the paths that exist and silently ignores the others; the contract
        # wants all or nothing, so every path is checked first.
        with ThreadPoolExecutor(WORKERS) as pool:
            missing = [
                p
                for p, ok in zip(wanted, pool.map(self._exists_on(branch), wanted), strict=True)
                if not ok
            ]
        if missing:
            # As on the embedded backend, a protected branch refuses the delete whatever it names.
            if protection.matches_any(branch, protection.patterns(self._sdk, self.repository)):
                raise ProtectedBranchError(f"branch {branch!r} is protected")
            raise ObjectNotFoundError(f"no object {missing[0]!r} in {branch!r}")
        for start in range(0, len(wanted), DELETE_BATCH):
            path_list = lakefs_sdk.PathList(paths=wanted[start : start + DELETE_BATCH])
            with boundary(BranchNotFoundError):
                result = self._sdk.objects_api.delete_objects(self.repository, branch, path_list)
            for error in result.errors or ():
                raise from_status(
                    error.status_code, f"{error.path}: {error.message}", ObjectNotFoundError
                )

    def _exists_on(self, branch: str) -> Callable[[str], bool]:
        def exists(path: str) -> bool:
            try:
                with boundary(ObjectNotFoundError):
                    self._sdk.objects_api.head_object(self.repository, branch, path)
            except ObjectNotFoundError:
                return False
            return True

        return exists

    def uncommitted(self, branch: str) -> Iterator[Change]:
        api = self._sdk.branches_api
        with about_branch(branch):
            yield from _changes(
                lambda after: api.diff_branch(self.repository, branch, after=after, amount=PAGE),
                BranchNotFoundError,
            )

    def reset(self, branch: str) -> None:
        # lakeFS refuses any reset on a protected branch, even one with nothing to drop.
        if next(self.uncommitted(branch), None) is None:
            return
        creation = lakefs_sdk.ResetCreation(type="reset")
        with about_branch(branch), boundary(BranchNotFoundError):
            self._sdk.branches_api.reset_branch(self.repository, branch, creation)

    def commit(self, branch: str, message: str, metadata: dict[str, str], committer: str) -> Commit:
        text, meta = _encode_commit(message, metadata, committer)
        creation = lakefs_sdk.CommitCreation(message=text, metadata=meta)  # type: ignore[call-arg]
        # A commit on a deleted branch fails in lakeFS's pre-commit hook run with a bare
        # "not found"; every 404 here is the branch.
        with about_branch(branch), boundary(BranchNotFoundError):
            raw = self._sdk.commits_api.commit(self.repository, branch, creation)
        return _to_commit(raw)

    def diff(self, left: str, right: str) -> Iterator[Change]:
        api = self._sdk.refs_api

        def page(after: str) -> Any:
            return api.diff_refs(
                self.repository, left, right, after=after, amount=PAGE, type="two_dot"
            )

        yield from _changes(page)

    def merge(
        self,
        source: str,
        dest_branch: str,
        strategy: MergeStrategy | None,
        message: str,
        metadata: dict[str, str],
        committer: str,
        guard: Collection[str] = (),
        *,
        attest: bool = False,
    ) -> Commit:
        """See :meth:`Backend.merge`; ``attest``: only through :meth:`merge_attested`."""
        if strategy is not None and strategy not in MERGE_STRATEGIES:
            raise InvalidArgumentError(
                f"unknown merge strategy {strategy!r}; use one of {', '.join(MERGE_STRATEGIES)}"
            )
        text, meta = _encode_commit(message, metadata, committer)
        guarded, tokened = (
            self._guarded_source(source, dest_branch, set(guard), text, meta)
            if guard
            else (None, {})
        )
        try:
            if attest and gatehook.client_key() is not None:
                merged = self.resolve(guarded or source)
                meta = {
                    **meta,
                    **gatehook.attestation_metadata(self.repository, dest_branch, "merge", merged),
                }
            body = lakefs_sdk.Merge(message=text, metadata=meta, strategy=strategy)  # type: ignore[call-arg]
            nothing = f"{source!r} has nothing to merge into {dest_branch!r}"
            with about_branch(dest_branch, nothing), boundary(RefNotFoundError):
                result = self._sdk.refs_api.merge_into_branch(
                    self.repository, guarded or source, dest_branch, merge=body
                )
        finally:
            if guarded is not None:
                self.delete_branch(guarded)
        if tokened:
            self._drop_guard_tokens(dest_branch, result.reference, tokened, text, meta)
        return self.get_commit(result.reference)

    def merge_attested(
        self,
        source: str,
        dest_branch: str,
        strategy: MergeStrategy | None,
        message: str,
        metadata: dict[str, str],
        committer: str,
        guard: Collection[str] = (),
    ) -> Commit:
        """:meth:`merge`, carrying the gate attestation the server's gate hook checks.

        Only :mod:`store.policy.enforce` calls this, once every gate held on the source commit;
        the attestation covers the commit lakeFS actually merges (see
        :mod:`store.backends.lakefs.gatehook`). Without ``FLOWLAKE_GATE_KEY`` it is :meth:`merge`.
        """
        return self.merge(
            source, dest_branch, strategy, message, metadata, committer, guard, attest=True
        )

    def install_gate_hook(self, wait: bool = True) -> str | None:
        """Install the server-side gate hook on the default branch (:func:`gatehook.install`)."""
        return gatehook.install(self._sdk, self.repository, self.default_branch, wait)

    def _guarded_source(
        self, source: str, dest_branch: str, guard: set[str], text: str, meta: dict[str, str]
    ) -> tuple[str, dict[str, dict[str, str]]]:
        """A temporary branch holding ``source`` with a fresh user-metadata token on every
        guarded path, for :meth:`merge`'s ``guard``.

        lakeFS has no compare-and-swap on a branch head and takes identical changes on both
        sides as agreement, but user metadata is part of an object's identity: with the token,
        any change the destination made to a guarded path is a conflict inside lakeFS's own
        atomic merge. Changes already there are refused first, without the temporary branch.

        Returns:
            The temporary branch, and each tokened path's user metadata before its token (for
            :meth:`_drop_guard_tokens`).

        Raises:
            ConflictError: the destination changed a guarded path since the merge base.
        """
        source_commit = self.resolve(source)
        head = self.branch_head(dest_branch)
        base = self.merge_base(source_commit, head)
        moved = guard & {c.path for c in self.diff(base, head)} if base else set()
        if moved:
            raise ConflictError("guarded paths changed on the destination", sorted(moved))
        # Named as a transaction's scratch branch of this process: hidden from listings and
        # tracking views while it lives, and reclaimed by gc if the process dies meanwhile.
        temp = scratch.new_short_name(f"{dest_branch}-guard")
        self.create_branch(temp, source_commit)
        token, api = uuid.uuid4().hex, self._sdk.objects_api

        def touch(path: str) -> dict[str, str] | None:
            try:
                with boundary(ObjectNotFoundError):
                    stats = api.stat_object(self.repository, temp, path, user_metadata=True)
            except ObjectNotFoundError:
                return None
            before = dict(stats.metadata or {})
            with boundary(ObjectNotFoundError):
                api.update_object_user_metadata(
                    self.repository,
                    temp,
                    path,
                    lakefs_sdk.UpdateObjectUserMetadata(set={**before, GUARD_KEY: token}),
                )
            return before

        try:
            with ThreadPoolExecutor(WORKERS) as pool:
                paths = sorted(guard)
                found = dict(zip(paths, pool.map(touch, paths), strict=True))
            touched = {path: before for path, before in found.items() if before is not None}
            if touched:
                creation = lakefs_sdk.CommitCreation(message=text, metadata=meta)  # type: ignore[call-arg]
                with boundary(BranchNotFoundError):
                    self._sdk.commits_api.commit(self.repository, temp, creation)
        except BaseException:
            self.delete_branch(temp)
            raise
        return temp, touched

    def _drop_guard_tokens(
        self,
        dest_branch: str,
        merged: str,
        tokened: dict[str, dict[str, str]],
        text: str,
        meta: dict[str, str],
    ) -> None:
        """Give the guarded paths of merge commit ``merged`` their user metadata back, so that a
        guarded merge changes on ``dest_branch`` what an unguarded one would, as on the embedded
        backend: a token left there would make a path the merge only read show as changed in
        diffs, and conflict with any branch that changed it since.

        One more merge into ``dest_branch`` (squashed: a single commit, merges being what a
        protected branch takes), with the merge's ``text`` and ``meta`` (the encoded message
        and metadata); ``dest-wins`` keeps any change made there meanwhile. Best
        effort: when that merge cannot be made (the destination is dirty, say) the tokens stay,
        which costs only spurious changes and conflicts on those paths.
        """
        temp = scratch.new_short_name(f"{dest_branch}-unguard")
        api = self._sdk.objects_api
        self.create_branch(temp, merged)

        def restore(item: tuple[str, dict[str, str]]) -> None:
            body = lakefs_sdk.UpdateObjectUserMetadata(set=item[1])
            with boundary(ObjectNotFoundError):
                api.update_object_user_metadata(self.repository, temp, item[0], body)

        try:
            with ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(restore, sorted(tokened.items())))
            # The merge's own message and metadata, as the guard commit has them: the branch's
            # head then reads as the merge did (its message, its tracking metadata).
            creation = lakefs_sdk.CommitCreation(message=text, metadata=meta)  # type: ignore[call-arg]
            body = lakefs_sdk.Merge(  # type: ignore[call-arg]
                message=text, metadata=meta, strategy="dest-wins", squash_merge=True
            )
            with boundary(BranchNotFoundError):
                self._sdk.commits_api.commit(self.repository, temp, creation)
                self._sdk.refs_api.merge_into_branch(self.repository, temp, dest_branch, merge=body)
        except StoreError:
            pass  # see above: the merge itself stands
        finally:
            self.delete_branch(temp)

    def revert(self, branch: str, commit_id: str, committer: str) -> Commit:
        return self._revert(branch, commit_id, committer)

    def revert_attested(self, branch: str, commit_id: str, committer: str) -> Commit:
        """:meth:`revert`, carrying the attestation the server's gate hook checks (only
        :mod:`store.policy.enforce` calls it, once the caller may revert on ``branch``)."""
        return self._revert(branch, commit_id, committer, attest=True)

    def _revert(self, branch: str, commit_id: str, committer: str, attest: bool = False) -> Commit:
        target = self.get_commit(commit_id)
        metadata = {"reverted": commit_id, COMMITTER_KEY: committer}
        if attest and gatehook.client_key() is not None:
            head = self.branch_head(branch)
            metadata.update(
                gatehook.attestation_metadata(self.repository, branch, "revert", commit_id, head)
            )
        overrides = lakefs_sdk.CommitOverrides(
            message=f"Revert {commit_id[:12]}", metadata=metadata
        )
        creation = lakefs_sdk.RevertCreation(  # type: ignore[call-arg]
            ref=commit_id, parent_number=1 if target.parents else 0, commit_overrides=overrides
        )
        nothing = f"commit {commit_id} changed nothing to revert"
        with about_branch(branch, nothing), boundary(BranchNotFoundError):
            self._sdk.branches_api.revert_branch(self.repository, branch, creation)
        # lakeFS answers 204 without the new commit id; the branch head is that commit unless
        # another writer moved the branch in between.
        return self.get_commit(self.branch_head(branch))

    # -- optional capabilities ---------------------------------------------------------------

    def local_path(self, ref: str, path: str) -> str | None:
        """``s3://<repository>/<ref>/<path>`` on the lakeFS S3 gateway when ``gateway_paths``.

        Raises:
            ObjectNotFoundError, RefNotFoundError: as :meth:`stat` (as on every backend, a
                missing object is an error, not a URL or None).
        """
        self.stat(ref, path)
        if not self._gateway_paths:
            return None
        return f"s3://{self.repository}/{ref}/{path}"

    def s3_storage_options(self) -> dict[str, Any]:
        """s3fs ``storage_options`` for reading :meth:`local_path` URLs through the gateway."""
        settings = self.settings
        return {
            "key": settings.access_key_id,
            "secret": settings.secret_access_key,
            "endpoint_url": settings.endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        }

    def close(self) -> None:
        """Drop the connections; every later call raises LakeClosedError, as on the embedded
        backend (the client passed in is closed with it). Closing twice is harmless."""
        rest = self._api_client.rest_client
        if not isinstance(rest.pool_manager, _ClosedPool):
            pool, rest.pool_manager = rest.pool_manager, _ClosedPool(self.repository)
            pool.clear()
        self._api_client.close()


class _ClosedPool:
    """The connection pool of a closed backend: every request is refused."""

    def __init__(self, repository: str) -> None:
        self._repository = repository

    def request(self, *args: Any, **kwargs: Any) -> Any:
        raise LakeClosedError(
            f"the lake at lakefs://{self._repository} was closed: open it again with store.open"
        )

    def clear(self) -> None:
        pass


def _paginate(
    fetch: Callable[[str], Any], not_found: type[NotFoundError] = RefNotFoundError
) -> Iterator[Any]:
    """Every result of a paginated lakeFS listing; ``fetch(after)`` returns one page."""
    after = ""
    while True:
        with boundary(not_found):
            page = fetch(after)
        yield from page.results
        if not page.pagination.has_more:
            return
        after = page.pagination.next_offset


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _changes(
    fetch: Callable[[str], Any], not_found: type[NotFoundError] = RefNotFoundError
) -> Iterator[Change]:
    for diff in _paginate(fetch, not_found):
        if diff.path_type == "object":
            yield Change(diff.path, _CHANGE_KINDS.get(diff.type, ChangeKind.CHANGED))


def _encode_commit(
    message: str, metadata: dict[str, str], committer: str
) -> tuple[str, dict[str, str]]:
    """lakeFS message and metadata for a flowlake commit (see the module docstring).

    Raises:
        InvalidArgumentError: a metadata key uses a reserved prefix.
    """
    reserved = sorted(k for k in metadata if k.startswith(RESERVED_METADATA_PREFIXES))
    if reserved:
        raise InvalidArgumentError(
            f"commit metadata keys {reserved} use a reserved prefix {RESERVED_METADATA_PREFIXES}"
        )
    meta = {**metadata, COMMITTER_KEY: committer}
    if message:
        return message, meta
    meta[EMPTY_MESSAGE_KEY] = "true"
    return _EMPTY_MESSAGE_PLACEHOLDER, meta


def _to_commit(raw: Any) -> Commit:
    stored = dict(raw.metadata or {})
    message = "" if stored.get(EMPTY_MESSAGE_KEY) == "true" else raw.message
    return Commit(
        id=raw.id,
        message=message,
        metadata={k: v for k, v in stored.items() if not k.startswith(RESERVED_METADATA_PREFIXES)},
        parents=tuple(raw.parents),
        timestamp=datetime.fromtimestamp(raw.creation_date, UTC),
        # lakeFS's own first commit ("Repository created") has no committer; the embedded
        # backend names flowlake as its maker, and so does this one.
        committer=stored.get(COMMITTER_KEY) or raw.committer or SYSTEM_COMMITTER,
    )


def _to_info(stats: Any) -> ObjectInfo:
    mtime = datetime.fromtimestamp(stats.mtime, UTC) if stats.mtime else None
    return ObjectInfo(
        path=stats.path, size=int(stats.size_bytes or 0), checksum=stats.checksum, mtime=mtime
    )
