"""flowlake's branchable artifact store.

>>> import store
>>> lake = store.open("./lake")                 # doctest: +SKIP
>>> exp = lake.branch("exp", source="main")     # doctest: +SKIP

``store.branch``, ``store.merge``, ``store.diff``, ``store.log`` and ``store.tag`` do the same on
the default lake (``$FLOWLAKE_LAKE``, else ``./lake``); see :mod:`store.default_lake`. The
submodule ``store/branch.py`` is imported as ``from store.branch import Branch``; the package
attribute ``store.branch`` is the function.
"""

from __future__ import annotations

import copyreg
import getpass
import importlib
import os
import sys
import types
from typing import TYPE_CHECKING, Any

from store.errors import *  # noqa: F403
from store.errors import InvalidArgumentError

if TYPE_CHECKING:
    from store.branch import Branch
    from store.default_lake import branch, default_location, diff, log, merge, tag
    from store.lake import Lake
    from store.model import BranchInfo, Change, ChangeKind, Commit, ObjectInfo

# The rest of the package (pyarrow, numpy, the backends, the policy) is imported on first use,
# so that ``import store.errors`` or a process that only names the errors (a compute job's
# supervisor, say) does not pay for it: ``store.Lake``, ``from store import Branch`` and
# ``store.branch(...)`` import their module then.
_LAZY = {
    "Branch": "store.branch",
    "BranchInfo": "store.model",
    "Change": "store.model",
    "ChangeKind": "store.model",
    "Commit": "store.model",
    "Lake": "store.lake",
    "ObjectInfo": "store.model",
    "branch": "store.default_lake",
    "default_location": "store.default_lake",
    "diff": "store.default_lake",
    "log": "store.default_lake",
    "merge": "store.default_lake",
    "tag": "store.default_lake",
}


def __getattr__(name: str) -> Any:
    """A lazy public name, or a submodule not imported yet (``store.lake`` after ``import
    store``, as when the package imported every module up front)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """The package's module type: the import system sets ``store.branch`` to the submodule
    when ``store/branch.py`` is first loaded, which would hide the function ``store.branch``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "branch" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def _reduce_package(module: _Package) -> tuple[Any, tuple[str]]:
    """Pickle the package as a reference, as pickle and cloudpickle do a plain module (they
    pick a module's reducer by its exact type, which ``_Package`` is not): a function shipped
    by value that names ``store`` finds it imported on the other side."""
    return importlib.import_module, (module.__name__,)


copyreg.pickle(_Package, _reduce_package)
sys.modules[__name__].__class__ = _Package

LAKEFS_SCHEME = "lakefs://"

__all__ = [
    "Branch",
    "BranchInfo",
    "Change",
    "ChangeKind",
    "Commit",
    "Lake",
    "ObjectInfo",
    "branch",
    "current_user",
    "default_location",
    "diff",
    "log",
    "merge",
    "open",
    "tag",
]


#: The keyword options ``store.open`` passes on to each backend's factory (checked here, where
#: they are known, so a typo is named instead of failing inside the backend).
_BACKEND_OPTIONS: dict[str, frozenset[str]] = {
    "embedded": frozenset({"objects", "storage_options", "create"}),
    "lakefs": frozenset(
        {
            "endpoint",
            "access_key_id",
            "secret_access_key",
            "create",
            "storage_namespace",
            "gateway_paths",
            "verify_reads",
        }
    ),
}


def _refuse_file_in_path(location: str) -> None:
    """Refuse an embedded lake location that is a file, or lies under one.

    Raises:
        InvalidArgumentError: ``location`` or its nearest existing parent is not a folder.
    """
    path = os.path.abspath(location)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
    if not os.path.isdir(path):
        where = "is" if path == os.path.abspath(location) else f"lies under {path}, which is"
        raise InvalidArgumentError(f"lake location {location} {where} a file, not a lake folder")


def _refuse_url(location: str) -> None:
    """Raises InvalidArgumentError for a URL given as an embedded lake's folder (it would
    become a local folder named ``s3:``)."""
    scheme, sep, _ = location.partition("://")
    if sep and scheme and all(c.isalnum() or c in "+.-" for c in scheme):
        raise InvalidArgumentError(
            f"lake location {location} is a URL: an embedded lake is a local folder (its objects "
            f"may live elsewhere: store.open('./lake', objects='{location}')), and a lakeFS "
            "repository is lakefs://<repository>"
        )


#: The variable a compute job's runner sets to the job's working folder (where
#: :func:`open` refuses to create a lake).
JOB_FOLDER_VARIABLE = "FLOWLAKE_JOB_FOLDER"


def _refuse_lake_in_job_folder(location: str) -> None:
    """Raises InvalidArgumentError when a compute job would create a lake in its own working
    folder: a relative path there does not lead to the submitter's lake."""
    job_folder = os.environ.get(JOB_FOLDER_VARIABLE)
    if not job_folder:
        return
    from store.backends.embedded.backend import REFS_FILE

    path = os.path.abspath(location)
    if os.path.exists(os.path.join(path, REFS_FILE)):
        return  # a lake already: opened as any lake is
    inside = os.path.commonpath([path, os.path.abspath(job_folder)]) == os.path.abspath(job_folder)
    if inside:
        raise InvalidArgumentError(
            f"no lake at {location} ({path}): this compute job runs in a working folder of its "
            "own, where a relative lake path does not lead to the submitter's lake; "
            "store.open() with no location opens the job's lake ($FLOWLAKE_LAKE), and "
            "compute.context().lake is it"
        )


def current_user() -> str:
    """The login flowlake acts as: ``FLOWLAKE_USER``, else the operating-system user.

    Raises:
        InvalidNameError: the login breaks the namespace name rules (see
            :func:`store.names.validate_login`).
    """
    from store.names import validate_login

    return validate_login(os.environ.get("FLOWLAKE_USER") or getpass.getuser())


def open(  # noqa: A001 - mirrors the builtin on purpose, like fsspec.open
    location: str | os.PathLike[str] | None = None,
    namespace: str | None = None,
    *,
    user: str | None = None,
    perimeter: str | None = None,
    token: str | None = None,
    **options: Any,
) -> Lake:
    """Open a lake.

    Args:
        location: a folder for the embedded backend (created when absent), or
            ``lakefs://<repository>`` for lakeFS (default: the default lake,
            ``$FLOWLAKE_LAKE``, else ``./lake``; in a compute job, the job's lake).
        namespace: ``user:<login>`` (default: the user's own), ``team:<name>`` or
            ``production``.
        user: the login commits are attributed to and whose namespace ``user:<login>`` is the
            default (default: :func:`current_user`); 1-64 characters without ``/``, ``:``,
            ``~``, ``^`` or control characters.
        perimeter: the policy perimeter to act in (default ``$FLOWLAKE_PERIMETER``, else the
            token's, else ``staging`` when ``main`` holds a policy); see docs/policy.md.
        token: a machine token's secret (default ``$FLOWLAKE_TOKEN``); never logged or stored.
        **options: backend options. Embedded: ``objects`` (fsspec URL of the object location),
            ``storage_options``, ``create``. lakeFS: ``endpoint``, ``access_key_id``,
            ``secret_access_key``, ``create``, ``storage_namespace``, ``gateway_paths``,
            ``verify_reads``.

    Raises:
        InvalidArgumentError: an unknown option, an empty or non-string ``perimeter`` or
            ``token``, or an embedded location that is (or lies under) a file; nothing is
            created.
        InvalidNameError: bad namespace or login.
        LakeNotFoundError: no lake there and ``create=False``.
        NotInstalledError: the backend's extra is not installed.
        PermissionDeniedError, TokenError: the policy refuses this principal or token.
    """
    from store.names import Namespace, validate_login

    user = validate_login(user) if user is not None else current_user()
    ns = Namespace.parse(namespace) if namespace is not None else Namespace("user", user)
    if location is None:
        from store.default_lake import default_location

        location = default_location()
    text = os.fspath(location)
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError("lake location must be a non-empty path or URL")
    for name, value in (("perimeter", perimeter), ("token", token)):
        if value is not None and (not isinstance(value, str) or not value):
            # A token's value is a secret even when mistyped: name only its type.
            given = repr(value) if name == "perimeter" else type(value).__name__
            raise InvalidArgumentError(f"{name} must be a non-empty string, not {given}")
    kind = "lakefs" if text.startswith(LAKEFS_SCHEME) else "embedded"
    unknown = sorted(set(options) - _BACKEND_OPTIONS[kind])
    if unknown:
        raise InvalidArgumentError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {kind} lakes; accepted: {', '.join(sorted(_BACKEND_OPTIONS[kind]))}"
        )
    from store.backends import load_backend
    from store.lake import Lake
    from store.policy.enforce import policy_view

    if kind == "lakefs":
        repository = text[len(LAKEFS_SCHEME) :].strip("/")
        backend = load_backend("lakefs", repository=repository, **options)
    else:
        _refuse_url(text)
        _refuse_file_in_path(text)
        _refuse_lake_in_job_folder(text)
        backend = load_backend("embedded", path=text, **options)
    try:  # the policy's one enforcement point sits under every handle (docs/policy.md)
        view = policy_view(backend, user, perimeter, token, location=text)
    except BaseException:
        backend.close()
        raise
    return Lake(view, ns, user, text)
