"""What a job runs: its code snapshot (checked out once per snapshot) and its pickled callable.

The submitter snapshots the project (:func:`tracking.snapshot.capture`) at submit and checks it
out into the state folder, keyed by the snapshot's content hash, so jobs with the same code
share one checkout and a job runs what the work tree held at submit, whatever happens to it
later. Callables are pickled with cloudpickle: functions of ``__main__`` and of modules that a
fresh interpreter could not import from the snapshot or the installed packages are shipped by
value; everything else by reference, imported from the checkout. Code shipped by value gets
back the name of the file it came from (:func:`name_shipped_code`), so that a job's traceback
points at the user's file and line, not at cloudpickle's ``<dynamic-code>``.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from store.errors import InvalidArgumentError

# The submitter's imports (cloudpickle, hashlib, ...) are made in the functions that use them:
# a job's runner imports this module, before the job's first line, for checkout_dir alone.

if TYPE_CHECKING:
    from tracking.snapshot import CodeListing, CodeSnapshot

MANIFEST = "manifest.json"
FILES = "files"


def snapshot_id(code: CodeSnapshot | CodeListing) -> str:
    """A content hash of the snapshot (its files, paths and git commit); a listing whose files
    were not all read has its snapshot's id."""
    import hashlib

    h = hashlib.sha256()
    h.update(f"{code.root}\0{code.git_commit}\0{code.git_dirty}\0".encode())
    for f in code.files:
        h.update(f"{f.path}\0{f.sha256}\0".encode())
    return h.hexdigest()[:32]


#: Per state code folder, in this process: the hashes of the files of the last checkout made
#: or found there. A snapshot does not read again a file whose hash is among them and which the
#: local cache vouches is unchanged (see :meth:`PendingSnapshot.finish`).
_held: dict[Path, frozenset[str]] = {}
#: Code folders remembered in :data:`_held` (all are dropped past this).
MAX_HELD_FOLDERS = 8


class PendingSnapshot:
    """A code snapshot whose ``git`` commands, when it needs any, are started when this is
    built, so that the submitter checks the job while they run; :meth:`finish` waits for them
    and checks the snapshot out, :meth:`close` stops them instead (the submission was refused).

    Built in the caller's thread: for a project where nothing git would report has changed,
    the local cache answers and no git process starts (:mod:`tracking.gitlisting`), and a
    thread of its own would cost more than that answer (its start, and the interpreter lock
    shared with the checks it would run beside).
    """

    def __init__(self, code_dir: str | os.PathLike[str] | None) -> None:
        from tracking import localcache
        from tracking.snapshot import PendingListing

        self._code_dir = code_dir
        self._listing = PendingListing(code_dir, cache_dir=localcache.cache_root())

    def close(self) -> None:
        """Stop the ``git`` commands; nothing was written."""
        self._listing.close()

    def finish(self, code_root: Path) -> tuple[str, Path]:
        """Snapshot the project and check it out under ``code_root``; returns
        ``(id, checkout)``. A checkout that exists already (same content) is reused as it is.

        It uses the local cache as a tracking run's snapshot does (:mod:`tracking.localcache`,
        :func:`tracking.snapshot.capture`): ``git status`` is not run again while ``HEAD``, the
        git index and every listed file's size and modification time are unchanged, and a settled
        file whose size, modification time and inode are unchanged keeps its recorded hash. Such
        a file is not read again when the last checkout this process made or found under
        ``code_root`` holds its hash (:func:`tracking.snapshot.listing`'s ``held``): when the
        snapshot's checkout exists, nothing is read; when it does not, the project is listed
        again with every file read, and checked out from those bytes.
        """
        from tracking import localcache
        from tracking.snapshot import PendingListing

        cache_dir = localcache.cache_root()
        listed = self._listing.finish(cache_dir=cache_dir, held=_held.get(code_root, ()))
        if any(f.data is None for f in listed.files):
            sid = snapshot_id(listed)
            if (code_root / sid / MANIFEST).is_file():
                return sid, code_root / sid / FILES
            listed = PendingListing(self._code_dir, cache_dir=cache_dir).finish(cache_dir=cache_dir)
        code = listed.snapshot()
        found = _check_out(code_root, code)
        if len(_held) >= MAX_HELD_FOLDERS and code_root not in _held:
            _held.clear()
        _held[code_root] = frozenset(f.sha256 for f in code.files)
        return found


def take_snapshot(code_root: Path, code_dir: str | os.PathLike[str] | None) -> tuple[str, Path]:
    """Snapshot the project and check it out under ``code_root``; returns ``(id, checkout)``.

    A checkout that exists already (same content) is reused as it is.
    """
    return PendingSnapshot(code_dir).finish(code_root)


def _check_out(code_root: Path, code: CodeSnapshot) -> tuple[str, Path]:
    import shutil
    import uuid

    sid = snapshot_id(code)
    target = code_root / sid
    if (target / MANIFEST).is_file():
        return sid, target / FILES
    tmp = code_root / f".{sid}.{uuid.uuid4().hex[:8]}.tmp"
    files = tmp / FILES
    files.mkdir(parents=True)
    for f in code.files:
        path = files / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.data)
    manifest = {
        "root": code.root,
        "git_commit": code.git_commit,
        "git_dirty": code.git_dirty,
        "truncated": code.truncated,
        "files": [{"path": f.path, "sha256": f.sha256} for f in code.files],
    }
    # The manifest is written last: a checkout without one is incomplete and never used.
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    try:
        os.rename(tmp, target)
    except OSError:  # another submitter checked out the same snapshot first
        shutil.rmtree(tmp, ignore_errors=True)
    return sid, target / FILES


def checkout_dir(code_root: Path, sid: str) -> Path:
    """The folder of the checkout of snapshot ``sid`` (what a job runs in)."""
    return code_root / sid / FILES


def load_snapshot(code_root: Path, sid: str) -> tuple[CodeSnapshot, Path]:
    """The snapshot ``sid`` as tracking records it, and the folder of its checkout."""
    from tracking.snapshot import CodeSnapshot, SourceFile

    target = code_root / sid
    manifest = json.loads((target / MANIFEST).read_text())
    files = tuple(
        SourceFile(f["path"], (target / FILES / f["path"]).read_bytes(), f["sha256"])
        for f in manifest["files"]
    )
    snapshot = CodeSnapshot(
        root=manifest["root"],
        git_commit=manifest["git_commit"],
        git_dirty=manifest["git_dirty"],
        files=files,
        truncated=manifest["truncated"],
    )
    return snapshot, target / FILES


#: The installed roots for the last ``sys.path`` seen: ``[(tuple(sys.path), roots)]``.
_roots: list[tuple[tuple[str, ...], list[str]]] = []


def _installed_roots() -> list[str]:
    """Where installed packages and the standard library live (asked of ``sysconfig`` once per
    ``sys.path``: ~0.1 ms a time)."""
    key = tuple(sys.path)
    known = _roots[0] if _roots else None
    if known is not None and known[0] == key:
        return known[1]
    import sysconfig

    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    found = [os.path.abspath(r) + os.sep for r in roots]
    _roots[:] = [(key, found)]
    return found


def _ship_by_value(module: ModuleType, snapshot_root: str) -> bool:
    """Whether a fresh interpreter in the job could not import ``module`` by name."""
    if module.__name__ == "__main__":
        return False  # cloudpickle ships __main__ by value already
    file = getattr(module, "__file__", None)
    if not file:
        return False  # built-in or namespace module: importable by name
    path = os.path.abspath(file)
    root = os.path.abspath(snapshot_root)
    if path.startswith(root + os.sep):
        # Imported by name from the checkout only when its name matches its place there
        # (a test module imported as ``test_x`` from ``tests/`` does not).
        base = os.path.join(root, *module.__name__.split("."))
        return path not in (base + ".py", os.path.join(base, "__init__.py"))
    return not any(path.startswith(r) for r in _installed_roots())


def pickle_payload(fn: Callable[..., Any], args: dict[str, Any], snapshot_root: str) -> bytes:
    """Pickle ``fn``, its keyword arguments and, for code shipped by value, the file it came
    from (a path relative to ``snapshot_root`` when it lies there, else absolute; None when
    unknown), for :func:`load_payload`.

    Raises:
        InvalidArgumentError: ``fn`` or an argument cannot be pickled (the message names it).
    """
    import cloudpickle  # the submitter's: a job's runner imports this module without it

    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    by_value = module is not None and _ship_by_value(module, snapshot_root)
    source = _source_file(module, snapshot_root) if by_value or _in_main(module) else None
    if by_value:
        assert module is not None
        cloudpickle.register_pickle_by_value(module)
    try:
        try:
            return cloudpickle.dumps((fn, args, source), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass  # pickled again one by one below, to name what cannot be
        try:
            cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise InvalidArgumentError(f"the callable {fn!r} cannot be pickled: {exc}") from None
        for key, value in args.items():
            try:
                cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise InvalidArgumentError(
                    f"argument {key!r} ({type(value).__name__}) cannot be pickled: {exc}"
                ) from None
        try:
            return cloudpickle.dumps((fn, args, source), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # each pickles alone, not together (rare: say, a cycle)
            raise InvalidArgumentError(
                f"the callable and its arguments cannot be pickled: {exc}"
            ) from None
    finally:
        if by_value:
            assert module is not None
            cloudpickle.unregister_pickle_by_value(module)


def _in_main(module: ModuleType | None) -> bool:
    return module is not None and module.__name__ == "__main__"


def _source_file(module: ModuleType | None, snapshot_root: str) -> str | None:
    file = getattr(module, "__file__", None)
    if not file:
        return None  # an interactive session or a notebook: no file to point at
    path = os.path.abspath(file)
    root = os.path.abspath(snapshot_root)
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else path


def load_payload(payload: bytes, checkout: Path) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The job's callable and keyword arguments from :func:`pickle_payload`'s bytes, code
    shipped by value named after its file (in ``checkout`` when it came from the snapshot)."""
    fn, args, source = pickle.loads(payload)
    if source is not None:
        name_shipped_code(fn, str(checkout / source), getattr(fn, "__module__", None))
    return fn, args


#: The file name cloudpickle gives every code object it ships by value.
DYNAMIC_CODE = "<dynamic-code>"


def name_shipped_code(root: object, filename: str, module: str | None) -> None:
    """Give the functions shipped by value with ``root`` (itself, the functions and classes of
    ``module`` it reaches through its globals and closure, their methods) the file name
    ``filename`` instead of :data:`DYNAMIC_CODE`. Code loaded by reference is left alone."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, staticmethod | classmethod):
            todo.append(obj.__func__)
        elif isinstance(obj, property):
            todo.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif isinstance(obj, type) and obj.__module__ == module:
            todo.extend(vars(obj).values())
        elif isinstance(obj, types.FunctionType) and obj.__code__.co_filename == DYNAMIC_CODE:
            obj.__code__ = _renamed(obj.__code__, filename)
            todo.extend(obj.__globals__.values())
            todo.extend(cell.cell_contents for cell in obj.__closure__ or () if _filled(cell))
            todo.extend(obj.__defaults__ or ())


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(
        _renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)
