"""The one place where lakeFS failures become :mod:`store.errors` classes.

lakeFS answers with an HTTP status and a JSON body ``{"message": ...}``. The status alone is
ambiguous (400 means "no changes", "dirty branch" and plain validation errors alike), so the
message is matched first against :data:`_BY_MESSAGE`, then the status against :data:`_BY_STATUS`.
The messages are the ``graveler`` error texts of lakeFS 1.x.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lakefs_sdk
import urllib3

from store.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    BranchNotFoundError,
    ConflictError,
    DirtyBranchError,
    InvalidArgumentError,
    NotFoundError,
    NothingToCommitError,
    PermissionDeniedError,
    ProtectedBranchError,
    RefNotFoundError,
    StoreError,
)

#: (status, fragment of the lakeFS message) -> error class; checked before the status table.
_BY_MESSAGE: tuple[tuple[int, str, type[StoreError]], ...] = (
    (400, "no changes", NothingToCommitError),
    (400, "dirty branch", DirtyBranchError),
    (400, "cannot use source metarange on a branch with uncommitted changes", DirtyBranchError),
    (403, "protected branch", ProtectedBranchError),
    (403, "cannot delete repository default branch", ProtectedBranchError),
    (409, "conflict found", ConflictError),
    (409, "already exists", AlreadyExistsError),
    (409, "not unique", AlreadyExistsError),
    # A pre-* hook (lakeFS Actions) refused, e.g. flowlake's gate hook: a policy refusal.
    (412, "hook aborted", PermissionDeniedError),
)

#: status -> error class, when no message rule matched.
_BY_STATUS: dict[int, type[StoreError]] = {
    400: InvalidArgumentError,
    401: PermissionDeniedError,
    403: PermissionDeniedError,
    404: RefNotFoundError,
    409: ConflictError,
    502: BackendUnavailableError,
    503: BackendUnavailableError,
    504: BackendUnavailableError,
}


class LakeFSError(StoreError):
    """A lakeFS failure with no closer flowlake meaning (for example a 500).

    Attributes:
        status: the HTTP status lakeFS answered with.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def message_of(body: Any) -> str:
    """The ``message`` of a lakeFS error body (bytes, str or already decoded), else the text."""
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return body.strip()
    if isinstance(body, dict):
        return str(body.get("message", body))
    return "" if body is None else str(body)


def from_status(
    status: int, message: str, not_found: type[NotFoundError] = RefNotFoundError
) -> StoreError:
    """The flowlake error for a lakeFS answer.

    Args:
        status: the HTTP status.
        message: lakeFS's error message.
        not_found: the class a 404 becomes (the caller knows whether it looked up an object,
            a branch or any ref).
    """
    lowered = message.lower()
    text = f"lakeFS: {message}" if message else f"lakeFS answered HTTP {status}"
    for rule_status, fragment, cls in _BY_MESSAGE:
        if status == rule_status and fragment in lowered:
            return cls(text)
    if status == 404:
        return not_found(text)
    by_status = _BY_STATUS.get(status)
    return by_status(text) if by_status is not None else LakeFSError(text, status)


def translate(exc: BaseException, not_found: type[NotFoundError] = RefNotFoundError) -> StoreError:
    """The flowlake error for an SDK exception or a urllib3 transport error."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, lakefs_sdk.ApiException):
        if exc.status is None or exc.status == 0:
            return BackendUnavailableError(f"lakeFS unreachable: {exc.reason}")
        return from_status(exc.status, message_of(exc.body), not_found)
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return BackendUnavailableError(f"lakeFS unreachable: {exc}")
    return LakeFSError(f"lakeFS: {exc}", 0)


@contextmanager
def boundary(
    not_found: type[NotFoundError] = RefNotFoundError, subject: str | None = None
) -> Iterator[None]:
    """Run a block of lakeFS calls; any SDK or transport error leaves it as a flowlake error.

    Args:
        not_found: the class a 404 becomes.
        subject: what the calls were about (``"branch 'x'"``); it leads the error message,
            since lakeFS's own messages name nothing.

    Raises:
        StoreError: the translated error, chained to the original.
    """
    try:
        yield
    except StoreError:
        raise
    except (lakefs_sdk.ApiException, urllib3.exceptions.HTTPError, ConnectionError) as exc:
        error = translate(exc, not_found)
        if subject and error.args and isinstance(error.args[0], str):
            error.args = (f"{subject}: {error.args[0]}", *error.args[1:])
        raise error from exc


@contextmanager
def about_branch(branch: str, nothing: str | None = None) -> Iterator[None]:
    """Run lakeFS calls that read or change ``branch``; its refusals leave worded as on every
    flowlake backend, naming the branch (lakeFS's own text, which often names nothing, stays in
    the chained cause).

    Args:
        branch: the backend branch name (shown to people by :mod:`store.errorview`).
        nothing: the message of a NothingToCommitError, when the call is not a commit.

    Raises:
        BranchNotFoundError, ProtectedBranchError, DirtyBranchError, NothingToCommitError: so
            worded; any other error unchanged.
    """
    try:
        yield
    except BranchNotFoundError as exc:
        raise BranchNotFoundError(f"branch {branch!r} does not exist") from exc
    except ProtectedBranchError as exc:
        raise ProtectedBranchError(
            f"branch {branch!r} is protected: change it by merging into it"
        ) from exc
    except DirtyBranchError as exc:
        raise DirtyBranchError(f"branch {branch!r} has uncommitted changes") from exc
    except NothingToCommitError as exc:
        text = nothing or f"branch {branch!r} has no uncommitted changes"
        raise NothingToCommitError(text) from exc


def check_response(
    resp: urllib3.BaseHTTPResponse, not_found: type[NotFoundError] = RefNotFoundError
) -> None:
    """Raise the flowlake error for a raw (non-SDK) lakeFS response that is not 2xx.

    Raises:
        StoreError: the translated error.
    """
    if 200 <= resp.status < 300:
        return
    raise from_status(resp.status, message_of(resp.data), not_found)
