"""The code snapshot of a run: the project's source files and, when there is one, its git commit.

Files are found with ``git ls-files`` (tracked plus untracked-but-not-ignored) inside a git
work tree, else by walking the folder; either way only source-like files below the size limits
are kept, so a data folder next to the code is not copied into every run. Folders that are never
code are left out in both modes (see :func:`non_code_folder`): an embedded lake (its job folders,
logs and code checkouts included), a virtual or conda environment, a cache, flowlake's own cache
and compute state folders, and the names in :data:`SKIP_DIRS`; so a lake kept inside the project
is not copied into each run's snapshot, nested deeper each time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import subprocess
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from tracking import gitlisting, localcache
from tracking.errors import SkippedCodeFileWarning

SOURCE_SUFFIXES = frozenset(
    {
        ".py",
        ".pyi",
        ".ipynb",
        ".toml",
        ".cfg",
        ".ini",
        ".yaml",
        ".yml",
        ".json",
        ".sql",
        ".sh",
        ".txt",
        ".md",
        ".r",
        ".R",
        ".scala",
        ".java",
        ".go",
        ".rs",
        ".c",
        ".h",
        ".cpp",
    }
)
#: Files without a source suffix that are code all the same: build and container recipes a
#: job's command may run (``make train``).
SOURCE_NAMES = frozenset(
    {
        "Makefile",
        "makefile",
        "GNUmakefile",
        "Dockerfile",
        "Containerfile",
        "Justfile",
        "justfile",
        "Procfile",
    }
)
SKIP_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "venv",
        "env",
        "__pycache__",
        "node_modules",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "site-packages",
        "build",
        "dist",
        ".tox",
        ".ipynb_checkpoints",
    }
)
#: Entries whose presence marks a folder that is never code: a virtual environment, a conda
#: environment, a cache (the CACHEDIR.TAG convention, https://bford.info/cachedir/).
NON_CODE_MARKERS = ("pyvenv.cfg", "conda-meta", "CACHEDIR.TAG")
#: An embedded lake's folder holds both (``store.backends.embedded``); a project file named
#: ``flowlake.json`` alone does not make its folder a lake.
LAKE_MARKERS = ("flowlake.json", "refs.db")
MAX_FILE_BYTES = 1 << 20
MAX_FILES = 2000
MAX_TOTAL_BYTES = 32 << 20
#: How many folder entries a walk outside git looks at before it stops (the snapshot is then
#: marked truncated): bounds the time a snapshot of a folder full of data can take.
MAX_WALK_ENTRIES = 200_000
GIT_TIMEOUT_S = 10


@dataclass(frozen=True)
class SourceFile:
    """One file of the snapshot: its path relative to the root, bytes and their SHA-256."""

    path: str
    data: bytes
    sha256: str


@dataclass(frozen=True)
class CodeSnapshot:
    """The project's code as a run saw it.

    Attributes:
        root: the folder the paths are relative to.
        git_commit: ``HEAD`` of the git work tree, or None outside git.
        git_dirty: whether tracked files differ from ``HEAD`` (None outside git).
        files: the source files kept, sorted by path.
        truncated: whether the limits dropped files.
        skipped: source-like files left out because their names are not valid UTF-8 (a run's
            tables store paths as UTF-8 strings), as ``ascii()`` writes the name's bytes
            decoded with ``surrogateescape``, sorted.
    """

    root: str
    git_commit: str | None
    git_dirty: bool | None
    files: tuple[SourceFile, ...]
    truncated: bool
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListedFile:
    """One file of a :class:`CodeListing`: its path relative to the root, size in bytes,
    SHA-256, and its bytes, or None when they were not read (see :func:`listing`)."""

    path: str
    size: int
    sha256: str
    data: bytes | None


@dataclass(frozen=True)
class CodeListing:
    """A code snapshot whose unchanged files need not have been read: as
    :class:`CodeSnapshot`, with :class:`ListedFile` entries."""

    root: str
    git_commit: str | None
    git_dirty: bool | None
    files: tuple[ListedFile, ...]
    truncated: bool
    skipped: tuple[str, ...] = ()

    def snapshot(self) -> CodeSnapshot:
        """The listing as a snapshot (a file whose bytes were not read counts as empty)."""
        return CodeSnapshot(
            root=self.root,
            git_commit=self.git_commit,
            git_dirty=self.git_dirty,
            files=tuple(SourceFile(f.path, f.data or b"", f.sha256) for f in self.files),
            truncated=self.truncated,
            skipped=self.skipped,
        )

    @staticmethod
    def of(code: CodeSnapshot) -> CodeListing:
        """A snapshot as a listing (every file's bytes at hand)."""
        files = tuple(ListedFile(f.path, len(f.data), f.sha256, f.data) for f in code.files)
        return CodeListing(
            code.root, code.git_commit, code.git_dirty, files, code.truncated, code.skipped
        )


def capture(
    root: str | os.PathLike[str] | None = None, *, cache_dir: str | None = None
) -> CodeSnapshot:
    """Snapshot the project at ``root`` (default: the git work tree around the current folder,
    else the current folder).

    Args:
        root: the project folder.
        cache_dir: the local cache folder (see :mod:`tracking.localcache`), or None for no
            cache. With it, a file whose size, modification time (in nanoseconds) and inode
            are what they were when it was last hashed is not hashed again, and ``git status``
            is not run again while ``HEAD``, the git index and every listed file's size and
            modification time are unchanged. Entries about files modified in the last
            :data:`RACY_WINDOW_NS` are never kept, since a write in the same clock tick could
            leave size and time unchanged.

    Warns:
        SkippedCodeFileWarning: some files were left out because their names are not valid
            UTF-8; :attr:`CodeSnapshot.skipped` lists them.
    """
    return listing(root, cache_dir=cache_dir).snapshot()


def listing(
    root: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | None = None,
    held: Collection[str] = (),
) -> CodeListing:
    """:func:`capture`, without reading files the caller holds already: a file whose cache
    entry (size, modification time and inode unchanged, see :func:`capture`) gives a hash in
    ``held`` is listed with that hash and no bytes. Every other file is read, and hashed from
    the bytes read. Without ``cache_dir`` or ``held`` every file is read. Inside a git work
    tree, a process that listed the same unchanged project before (every name with the same
    size, modification and change times, inode and mode; see :data:`_last_files`) lists it
    again from memory when ``held`` holds every file.

    Warns:
        SkippedCodeFileWarning: as :func:`capture`.
    """
    return PendingListing(root, cache_dir=cache_dir).finish(cache_dir=cache_dir, held=held)


#: What ``git rev-parse`` is asked, besides ``HEAD``: the git dirs tell the listing cache
#: (:mod:`tracking.gitlisting`) which files ``HEAD`` and the ignore rules come from.
_REV_PARSE = ("--show-toplevel", "--git-path", "index", "--absolute-git-dir", "--git-common-dir")


class PendingListing:
    """A :func:`listing` whose git commands were started when this was built, so that the
    caller can work while they run; :meth:`finish` waits for them and lists, :meth:`close`
    stops them instead.

    With ``cache_dir``, what the two commands (``git rev-parse`` and ``git ls-files``) said of
    an unchanged work tree is taken from the local cache, and no git process starts at all:
    see :mod:`tracking.gitlisting` for what an entry is checked against.
    """

    def __init__(
        self, root: str | os.PathLike[str] | None = None, *, cache_dir: str | None = None
    ) -> None:
        self._root = root
        self._cwd = os.path.abspath(os.fspath(root) if root is not None else os.getcwd())
        self._spec = "." if root is not None else ":/"
        self._cache_dir = cache_dir
        self._rev: subprocess.Popen[bytes] | None = None
        self._listing: subprocess.Popen[bytes] | None = None
        self._cached: gitlisting.GitAnswer | None = None
        self._settled: _Settled | None = None
        if cache_dir:
            # The variables now, as git would see them now: a remembered listing made under
            # others is not this one (what it was made from is looked at by finish).
            self._env = _env()
            settled = _settled_listings.get((cache_dir, self._cwd, self._spec))
            self._settled = settled if settled is not None and settled.env == self._env else None
        if self._settled is None:
            self._start()

    def _start(self) -> None:
        """Take git's answer from the local cache, or start the git commands."""
        cache_dir = self._cache_dir
        self._cached = gitlisting.load(cache_dir, self._cwd, self._spec) if cache_dir else None
        if self._cached is not None:
            return
        self._started_ns = time.time_ns()
        self._git_env = gitlisting.git_env()  # what git runs under: its answer's key
        # rev-parse and ls-files do not depend on each other: run them side by side.
        self._rev = _spawn(self._cwd, "rev-parse", *_REV_PARSE, "HEAD")
        self._listing = _spawn(
            self._cwd,
            "ls-files",
            "-co",
            "--exclude-standard",
            "-z",
            "--full-name",
            "--",
            self._spec,
        )

    def close(self) -> None:
        """Stop the git commands (when the listing is not wanted after all)."""
        for proc in (self._rev, self._listing):
            _stop(proc)

    def finish(self, *, cache_dir: str | None = None, held: Collection[str] = ()) -> CodeListing:
        """The listing: as :func:`listing` with these arguments.

        Warns:
            SkippedCodeFileWarning: as :func:`capture`.
        """
        settled = self._settled
        if settled is not None:
            if (
                cache_dir == self._cache_dir
                and settled.hashes <= frozenset(held)
                and _unchanged_since(settled)
            ):
                return settled.listing
            self._settled = None  # something changed, or the caller lacks some file's bytes
            self._start()
        if self._cached is not None:
            known = self._cached
            code, _, signature = _list(
                self._root,
                self._cwd,
                self._spec,
                (known.top, known.index, known.commit),
                known.listed,
                cache_dir,
                held,
                known.kept,
            )
            # Remembered under the variables git's cached answer was taken for, or not at all.
            if (
                cache_dir
                and cache_dir == self._cache_dir
                and known.witness
                and signature
                and _env() == self._env
            ):
                _settle(cache_dir, self._cwd, self._spec, self._env, known, signature, code)
            return code
        rev_out, listed = _finish(self._rev), _finish(self._listing)
        # ls-files failing too means no work tree: asking rev-parse again would only say so.
        if rev_out is None and listed is not None:  # a repository without commits yet
            rev_out = _git(self._cwd, "rev-parse", *_REV_PARSE)
        lines = (rev_out or "").splitlines()
        top, index, git_dir, common_dir, commit = (lines + [""] * 5)[:5]
        # The folders git leaves out, which the cache need not watch: asked while the files
        # are read and hashed.
        ignored = (
            _spawn(
                self._cwd,
                "ls-files",
                "-oi",
                "--exclude-standard",
                "--directory",
                "-z",
                "--full-name",
                "--",
                self._spec,
            )
            if self._cache_dir and top and listed is not None and len(lines) in (4, 5)
            else None
        )
        try:
            code, kept, _ = _list(
                self._root, self._cwd, self._spec, (top, index, commit), listed, cache_dir, held
            )
        except BaseException:
            _stop(ignored)
            raise
        ignored_out = _finish(ignored) if ignored is not None else None
        if (
            self._cache_dir
            and ignored_out is not None
            and listed is not None
            and gitlisting.git_env() == self._git_env  # else its key would name other variables
        ):
            gitlisting.store(
                self._cache_dir,
                self._cwd,
                self._spec,
                gitlisting.GitAnswer(top, index, commit, listed),
                git_dir=git_dir,
                common_dir=os.path.join(self._cwd, common_dir),
                ignored=ignored_out,
                started_ns=self._started_ns,
                racy_window_ns=RACY_WINDOW_NS,
                git=lambda *args: _git(self._cwd, *args),
                kept=kept,
            )
        return code


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
    if proc is not None:
        proc.communicate()


def _list(
    root: str | os.PathLike[str] | None,
    cwd: str,
    spec: str,
    rev: tuple[str, str, str],
    listed: str | None,
    cache_dir: str | None,
    held: Collection[str],
    kept: gitlisting.Kept | None = None,
) -> tuple[CodeListing, gitlisting.Kept | None, Signature | None]:
    """The listing, (inside a work tree) the listed names kept outside non-code folders, and
    (with ``cache_dir``, inside a work tree) their :func:`_signature`.

    ``kept``: what an earlier listing of the same unchanged work tree kept (see
    :class:`gitlisting.Kept`), used instead of looking at every folder again when it was
    judged against the same flowlake folders.
    """
    top, index, commit = rev
    dirty: bool | None = None
    walk_truncated = False
    lstats: dict[str, os.stat_result | None] = {}
    judged: gitlisting.Kept | None = None
    if top:
        base = top if root is None else cwd
        own = _flowlake_folders()
        own_key = tuple(sorted(own))
        if kept is not None and kept.own == own_key:
            judged = kept
            names = list(kept.names)
        else:
            names = [n for n in (listed or "").split("\0") if n]
            if root is not None:
                prefix = os.path.relpath(os.path.realpath(cwd), top).replace(os.sep, "/")
                names = [n[len(prefix) + 1 :] for n in names] if prefix != "." else names
            names = _outside_non_code_folders(base, names, own)
            judged = gitlisting.Kept(own_key, tuple(names))
        lstats = _lstat_all(base, names)
        stats = {n: _file_stamp(st) for n, st in lstats.items()}
        dirty = _dirty(cwd, top, spec, commit, os.path.join(cwd, index), stats, cache_dir)
    else:
        base = cwd
        names, walk_truncated = _walk(cwd)
    hashes_path = localcache.entry_path(cache_dir, "code", _digest(base)) if cache_dir else None
    names, skipped = _utf8_names(names)
    if skipped:
        warnings.warn(
            f"code snapshot of {base}: {len(skipped)} file(s) left out because their names are "
            f"not valid UTF-8: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
            SkippedCodeFileWarning,
            stacklevel=2,
        )
    names.sort()
    signature = _signature(names, lstats) if hashes_path else None
    last = _last_files.get(hashes_path) if signature is not None and hashes_path else None
    if last is not None and last.signature == signature and last.hashes <= frozenset(held):
        files, truncated = list(last.files), last.truncated
    else:
        known = localcache.load(hashes_path) if hashes_path else None
        known = known if isinstance(known, dict) else {}
        files, stamps, truncated, failed = _read_files(base, names, known, frozenset(held), lstats)
        if failed:  # listed without a file it could not read now: not to be listed so again
            signature = None
        if hashes_path:
            horizon = time.time_ns() - RACY_WINDOW_NS
            fresh = {}
            for f in files:
                mtime_ns, ctime_ns, ino = stamps[f.path]
                if 0 <= mtime_ns < horizon:
                    fresh[f.path] = [f.size, mtime_ns, ctime_ns, ino, f.sha256]
            if fresh != known:
                localcache.store(hashes_path, fresh)
            if signature is not None and len(fresh) == len(files):
                _remember_files(hashes_path, signature, files, truncated)
    code = CodeListing(
        root=base,
        git_commit=commit.strip() or None,
        git_dirty=dirty,
        files=tuple(files),
        truncated=truncated or walk_truncated,
        skipped=tuple(skipped),
    )
    return code, judged, signature


@dataclass(frozen=True)
class _Settled:
    """A listing made from a cached git answer, remembered with what else it was made from.

    It is the listing again while the variables git and the listing read (:func:`_env`), every
    file and stamp of the answer's :class:`gitlisting.Witness`, and every kept name's
    :func:`_signature` are the same, and the caller holds every file's bytes (``hashes``):
    nothing then changed that the cached answer, the hash cache and ``git status``'s cached
    answer were checked against. Kept only when all of it was settled (see
    :data:`RACY_WINDOW_NS`) and no name was skipped (its warning is given each time).
    """

    env: tuple[tuple[str, str], ...]
    witness: gitlisting.Witness
    signature: Signature
    listing: CodeListing
    hashes: frozenset[str]


#: Per (cache folder, folder listed, pathspec), in this process: the last listing made from a
#: cached git answer whose every input was settled. A run or job from an unchanged project is
#: listed again from it with one look at each input (~0.1 ms for a small project, about a third
#: of loading and checking the cached answer, then listing from it).
_settled_listings: dict[tuple[str, str, str], _Settled] = {}


def _env() -> tuple[tuple[str, str], ...]:
    """What a listing read from the environment: git's variables and flowlake's own folders."""
    return (*gitlisting.git_env(), *(("\0own", p) for p in sorted(_flowlake_folders())))


def _unchanged_since(settled: _Settled) -> bool:
    """Whether every file and stamp of ``settled``'s witness and every kept name's signature
    are what they were (the variables are compared by the caller)."""
    if not gitlisting.unchanged(settled.witness):
        return False
    names = [entry[0] for entry in settled.signature]
    return _signature(names, _lstat_all(settled.listing.root, names)) == settled.signature


def _settle(
    cache_dir: str,
    cwd: str,
    spec: str,
    env: tuple[tuple[str, str], ...],
    known: gitlisting.GitAnswer,
    signature: Signature,
    code: CodeListing,
) -> None:
    """Remember ``code`` (made under ``env`` from the cached answer ``known``, its names with
    ``signature``) when every input was settled, no name was skipped and ``git status``
    answered (a failed one is asked again next time, as its own cache does)."""
    witness = known.witness
    assert witness is not None
    horizon = time.time_ns() - RACY_WINDOW_NS
    newest = max((max(s[2], s[3]) for s in signature), default=0)
    if code.skipped or code.git_dirty is None or max(newest, witness.newest_ns()) >= horizon:
        return
    files = _without_bytes(code.files)
    if len(_settled_listings) >= MAX_REMEMBERED_PROJECTS:
        _settled_listings.clear()
    _settled_listings[(cache_dir, cwd, spec)] = _Settled(
        env,
        witness,
        signature,
        CodeListing(code.root, code.git_commit, code.git_dirty, files, code.truncated),
        frozenset(f.sha256 for f in files),
    )


#: Each listed name with its :func:`_file_stamp` (see :func:`_signature`).
Signature = tuple[tuple[str, int, int, int, int, int], ...]


@dataclass(frozen=True)
class _Listed:
    """What :func:`_read_files` found in a project whose every file was settled (see
    :data:`RACY_WINDOW_NS`): the names' :func:`_signature`, the files' hashes, and the files
    without their bytes."""

    signature: Signature
    hashes: frozenset[str]
    files: tuple[ListedFile, ...]
    truncated: bool


#: Per code hash cache entry (one per project folder and cache folder), in this process: the
#: last listing whose every file was settled. While every listed name has the same size,
#: modification and change times, inode and mode, and the caller holds every file's bytes
#: already, those files are the listing again; a sweep's runs then neither load the hash cache
#: nor look at each file again (~0.4 ms a run for 200 files). It compares all the hash cache
#: compares (see :func:`capture`) and the change time besides, so it is never laxer.
_last_files: dict[str, _Listed] = {}
#: Projects remembered in :data:`_last_files` (all are dropped past this).
MAX_REMEMBERED_PROJECTS = 8


def _signature(names: list[str], lstats: dict[str, os.stat_result | None]) -> Signature | None:
    """Each name with its size, modification and change times (ns), inode and mode, in order;
    None when a name was not looked at (outside git) or could not be."""
    out = []
    for name in names:
        st = lstats.get(name)
        if st is None:
            return None
        out.append((name, *_file_stamp(st)))
    return tuple(out)


def _remember_files(
    key: str, signature: Signature, files: list[ListedFile], truncated: bool
) -> None:
    if len(_last_files) >= MAX_REMEMBERED_PROJECTS and key not in _last_files:
        _last_files.clear()
    _last_files[key] = _Listed(
        signature, frozenset(f.sha256 for f in files), _without_bytes(files), truncated
    )


def _without_bytes(files: Sequence[ListedFile]) -> tuple[ListedFile, ...]:
    """``files`` as remembered in memory: hashes and sizes, not bytes."""
    return tuple(f if f.data is None else ListedFile(f.path, f.size, f.sha256, None) for f in files)


def _utf8_names(names: list[str]) -> tuple[list[str], list[str]]:
    """(names that are valid UTF-8, ``ascii()`` of the source-like others, sorted).

    Names come from git or the file system decoded with ``surrogateescape``: a byte that is
    not UTF-8 becomes a lone surrogate, which no UTF-8 string column can hold.
    """
    kept: list[str] = []
    bad: list[str] = []
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            if _is_source(name):
                bad.append(ascii(name))
            continue
        kept.append(name)
    return kept, sorted(bad)


#: A file changed this recently (nanoseconds) may change again within one clock tick of the
#: file system, unseen by size and time; the caches never keep what they learnt about it.
RACY_WINDOW_NS = 2_000_000_000


def _lstat_all(base: str, names: list[str]) -> dict[str, os.stat_result | None]:
    out: dict[str, os.stat_result | None] = {}
    lstat = os.lstat
    prefix = base if base.endswith("/") else base + "/"  # names are relative and "/"-separated
    for name in names:
        try:
            out[name] = lstat(prefix + name)
        except OSError:
            out[name] = None
    return out


def _settled(stat: tuple[int, int] | None) -> bool:
    return stat is not None and stat[1] >= 0 and time.time_ns() - stat[1] > RACY_WINDOW_NS


def _dirty(
    start: str,
    top: str,
    spec: str,
    commit: str | None,
    index: str,
    stats: dict[str, tuple[int, int, int, int, int]],
    cache_dir: str | None,
) -> bool | None:
    """Whether tracked files differ from ``HEAD``: ``git status``, or its cached answer.

    ``stats``: each listed file's :func:`_file_stamp`. The answer is cached under the work
    tree, ``HEAD``, the index's size and time, those stamps and git's variables: a file's
    change time and mode move with any edit, ``chmod`` or swap, whatever its other times say.
    """

    def key() -> str | None:
        try:
            st = os.stat(index)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except FileNotFoundError:  # no index yet: as much a value as any index
            stamp = "none"
        except OSError:
            return None
        # A file that is gone is as much a value as any stamp (and never racy).
        horizon = time.time_ns() - RACY_WINDOW_NS
        if not all(0 <= f[1] < horizon or f[0] == -1 for f in stats.values()) or (
            stamp != "none" and not _settled((st.st_size, st.st_mtime_ns))
        ):
            return None
        parts = [top, start, spec, commit or "", stamp, repr(gitlisting.git_env())]
        parts += [f"{n}\0{f}" for n, f in sorted(stats.items())]
        return _digest("\n".join(parts))

    before = key() if cache_dir else None
    path = localcache.entry_path(cache_dir, "git-status", before) if cache_dir and before else None
    cached = localcache.load(path) if path else None
    if isinstance(cached, bool):
        return cached
    status = _git(start, "status", "--porcelain", "--untracked-files=no", "--", spec)
    dirty = bool(status.strip()) if status is not None else None
    # Store only when nothing moved while git looked (git may refresh its index meanwhile:
    # then the next run stores it).
    if path and dirty is not None and key() == before:
        localcache.store(path, dirty)
    return dirty


def _file_stamp(st: os.stat_result | None) -> tuple[int, int, int, int, int]:
    """(size, modification and change times in ns, inode, mode) of a listed file; all -1 when
    it is gone."""
    if st is None:
        return (-1, -1, -1, -1, -1)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


def _sha256(data: bytes) -> str:
    """A source file's hash (the one place files are hashed)."""
    return hashlib.sha256(data).hexdigest()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _read_files(
    root: str,
    names: list[str],
    known: dict[str, object],
    held: frozenset[str],
    lstats: dict[str, os.stat_result | None],
) -> tuple[list[ListedFile], dict[str, tuple[int, int, int]], bool, bool]:
    """The source-like files among ``names``, their (mtime, ctime, inode), whether limits
    dropped any, and whether any could not be read (left out).

    A file whose size, modification and change times and inode match its entry in ``known``
    keeps the hash recorded there, and is not read at all when that hash is in ``held``.
    ``lstats`` holds what ``os.lstat`` said of some names already. The change time is what an
    edit that puts the modification time back (``touch -d``, a tool keeping times) cannot put
    back.
    """
    files: list[ListedFile] = []
    stamps: dict[str, tuple[int, int, int]] = {}
    total = 0
    truncated = failed = False
    prefix = root if root.endswith("/") else root + "/"  # names are relative, "/"-separated
    for name in names:
        if not _is_source(name):
            continue
        full = prefix + name
        try:
            st = lstats.get(name) or os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_size > MAX_FILE_BYTES:
                truncated = True
                continue
            if len(files) >= MAX_FILES or total + st.st_size > MAX_TOTAL_BYTES:
                return files, stamps, True, failed
            entry = known.get(name)
            cached = (
                entry[4]
                if isinstance(entry, list)
                and len(entry) == 5
                and entry[:4] == [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
                and isinstance(entry[4], str)
                else None
            )
            if cached is not None and cached in held:
                listed = ListedFile(name, st.st_size, cached, None)
            else:
                with open(full, "rb") as f:
                    data = f.read()
                # Not known, or changed since lstat: hash what was read.
                digest = cached if cached is not None and len(data) == st.st_size else None
                listed = ListedFile(name, len(data), digest or _sha256(data), data)
        except FileNotFoundError:  # gone since git listed it
            continue
        except OSError:  # there, but unreadable now (permissions, I/O)
            failed = True
            continue
        total += listed.size
        files.append(listed)
        stamps[name] = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return files, stamps, truncated, failed


@functools.lru_cache(maxsize=1 << 16)
def _is_source(name: str) -> bool:
    """Whether a listed file is one the snapshot keeps (by suffix, outside skipped folders).

    Remembered per name: a project's names repeat with every run."""
    parts = name.split("/")
    return not any(p in SKIP_DIRS for p in parts[:-1]) and (
        os.path.splitext(name)[1] in SOURCE_SUFFIXES or parts[-1] in SOURCE_NAMES
    )


def non_code_folder(path: str, own: frozenset[str] | None = None) -> bool:
    """Whether the folder at ``path`` is one a code snapshot never includes, whatever its
    name: an embedded flowlake lake (:data:`LAKE_MARKERS`), a virtual or conda environment or
    a tagged cache (:data:`NON_CODE_MARKERS`), or flowlake's own cache or compute state folder
    (``own``: those folders' real paths, when the caller has them already).
    """
    if all(os.path.lexists(os.path.join(path, m)) for m in LAKE_MARKERS):
        return True
    if any(os.path.lexists(os.path.join(path, m)) for m in NON_CODE_MARKERS):
        return True
    return os.path.realpath(path) in (_flowlake_folders() if own is None else own)


def _flowlake_folders() -> frozenset[str]:
    """flowlake's local folders that may sit inside a project: the cache (``tracking``) and
    the compute state roots (``compute.state``), as real paths."""
    home = os.path.expanduser("~")
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    found = {localcache.cache_root(), os.path.join(state, "flowlake")}
    if os.environ.get("FLOWLAKE_COMPUTE_DIR"):
        found.add(os.environ["FLOWLAKE_COMPUTE_DIR"])
    return frozenset(os.path.realpath(p) for p in found)


def _outside_non_code_folders(base: str, names: list[str], own: frozenset[str]) -> list[str]:
    """``names`` (relative to ``base``, ``/``-separated) less those inside a folder that
    :func:`non_code_folder` (``own``: flowlake's folders) or :data:`SKIP_DIRS` leaves out; each
    folder is looked at once."""
    verdicts: dict[str, bool] = {}

    def excluded(folder: str) -> bool:
        known = verdicts.get(folder)
        if known is None:
            parent, _, leaf = folder.rpartition("/")
            known = (
                (bool(parent) and excluded(parent))
                or leaf in SKIP_DIRS
                or non_code_folder(os.path.join(base, folder), own)
            )
            verdicts[folder] = known
        return known

    return [n for n in names if "/" not in n or not excluded(n.rpartition("/")[0])]


def _walk(root: str) -> tuple[list[str], bool]:
    """The source-like files under ``root`` outside non-code folders, and whether a limit
    (:data:`MAX_FILES` files kept, :data:`MAX_WALK_ENTRIES` entries seen) stopped the walk."""
    out: list[str] = []
    seen = 0
    own = _flowlake_folders()
    for dirpath, dirnames, filenames in os.walk(root):
        seen += len(dirnames) + len(filenames)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS
            and not d.startswith(".")
            and not non_code_folder(os.path.join(dirpath, d), own)
        )
        rel = os.path.relpath(dirpath, root)
        for filename in sorted(filenames):
            if (
                os.path.splitext(filename)[1] not in SOURCE_SUFFIXES
                and filename not in SOURCE_NAMES
            ):
                continue
            out.append(filename if rel == "." else f"{rel}/{filename}".replace(os.sep, "/"))
        if len(out) > MAX_FILES or seen > MAX_WALK_ENTRIES:
            return out, True
    return out, False


def _spawn(cwd: str, *args: str) -> subprocess.Popen[bytes] | None:
    """Start a git command (None when git is absent)."""
    try:
        return subprocess.Popen(
            ["git", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
    except OSError:
        return None


def _finish(proc: subprocess.Popen[bytes] | None) -> str | None:
    """Output of a started git command, or None when it failed or timed out."""
    if proc is None:
        return None
    try:
        out, _ = proc.communicate(timeout=GIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0:
        return None
    return out.decode("utf-8", "surrogateescape")


def _git(cwd: str, *args: str) -> str | None:
    """Output of a git command, or None when git is absent or this is not a work tree."""
    return _finish(_spawn(cwd, *args))
