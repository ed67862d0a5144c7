"""What the code snapshot's two git commands said of a work tree, kept in the local cache so
that a project where nothing git would report has changed starts no git process at all.

The commands are ``git rev-parse --show-toplevel --git-path index HEAD`` and ``git ls-files
-co --exclude-standard -z --full-name -- <spec>`` (see :mod:`tracking.snapshot`). An entry
holds their answer and everything that answer depends on, checked with ``stat`` calls and a few
reads of tiny files:

- which work tree the folder is in: each folder from it up to the top of the work tree (a
  ``.git`` created in one of them changes its modification time), the folder itself as the
  path given names it (a symbolic link moved elsewhere changes its inode), and the top's
  ``.git`` file when it is one (a worktree or a submodule);
- ``HEAD``: the git dir's ``HEAD`` file, and when it names a branch, that branch's loose ref
  file (both read whole) and ``packed-refs`` (stat);
- ``ls-files``: the index; every folder git traverses (every folder below the listed one that
  no ignore rule excludes: creating, removing or renaming an entry in it changes its
  modification time) and the ``.gitignore`` in each; ``info/exclude``; the global excludes
  file (``core.excludesFile``, else ``$XDG_CONFIG_HOME/git/ignore``); and every config file
  that could change what git does (the repository's, the worktree's, ``~/.gitconfig``,
  ``$XDG_CONFIG_HOME/git/config``, the system one). A missing file counts as a value: its
  creation is a change.

The environment variables that steer git (``GIT_*``, ``HOME``, ``XDG_CONFIG_HOME``, ``PATH``)
and the folder are the entry's key. An entry is kept only when none of what it checks was
modified within the racy window before git started (a change in the same clock tick would
leave the stamps unchanged), the rule git's own untracked cache follows; the files read whole
(``HEAD``, its ref) are stamped too, so that one rewritten after git answered (another
process committing while the listing ran) keeps the entry from being stored. Not cached: config
files that include others, refs kept in a reftable, a ``HEAD`` that is neither a branch nor a
commit id, trees with more than :data:`MAX_FOLDERS` traversed folders. Like git's untracked
cache, this relies on the file system updating a folder's modification time when an entry in it
is created, removed or renamed (every local POSIX file system does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from tracking import localcache

#: The most folders an entry checks; a larger tree is listed by git every time, since checking
#: that many folders costs about what starting git does.
MAX_FOLDERS = 2000
#: The most folder entries the walk that records traversed folders looks at.
MAX_ENTRIES = 200_000
#: Environment variables besides ``GIT_*`` that change what git reads.
_ENV = ("HOME", "XDG_CONFIG_HOME", "PATH")
_COMMIT_ID = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_DIRECTORY = "\0directory"

Stamp = list[int] | None
Git = Callable[..., str | None]


@dataclass(frozen=True)
class Kept:
    """Which listed names the code snapshot keeps once folders that are never code are left
    out (:func:`tracking.snapshot.non_code_folder`), relative to the folder it lists from, and
    flowlake's own folders (real paths) they were judged against.

    Valid as long as the entry it is stored with: every folder holding a listed name is one
    the entry stamps, and a marker file created in or removed from a folder changes its
    modification time.
    """

    own: tuple[str, ...]
    names: tuple[str, ...]


@dataclass(frozen=True)
class GitAnswer:
    """What the two commands said: the work tree's top, the index path (as ``--git-path``
    prints it, relative to the folder), ``HEAD``'s commit id ("" before the first commit) and
    the ``ls-files`` output (NUL-separated names); and, when the snapshot stored it with the
    answer, the names it kept (not part of what git said, so not compared)."""

    top: str
    index: str
    commit: str
    listed: str
    kept: Kept | None = field(default=None, compare=False)
    #: What a cached answer was checked against (see :func:`unchanged`); None for git's own.
    witness: Witness | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Witness:
    """What a cached answer depends on: files read whole with their text, and paths with
    their :func:`_stamp`; the answer holds while :func:`unchanged` says so."""

    reads: tuple[tuple[str, str | None], ...]
    stamps: tuple[tuple[str, Stamp], ...]

    def newest_ns(self) -> int:
        """The latest modification or change time among the stamps (ns; 0 when none)."""
        return max((max(s[3], s[4]) for _, s in self.stamps if s is not None), default=0)


def unchanged(witness: Witness) -> bool:
    """Whether every file ``witness`` read has the same text and every path the same stamp."""
    try:
        for path, content in witness.reads:
            if _read(path) != content:
                return False
        for path, stamp in witness.stamps:
            if _stamp(path) != stamp:
                return False
    except (OSError, ValueError, TypeError):
        return False
    return True


class _Uncacheable(Exception):
    """Something the entry would depend on cannot be checked by stat and read calls."""


def load(cache_dir: str, cwd: str, spec: str) -> GitAnswer | None:
    """The cached answer for ``cwd`` and ``spec``, or None when there is none or anything it
    depends on has changed since it was stored."""
    entry = localcache.load(_entry_path(cache_dir, cwd, spec))
    if not isinstance(entry, dict):
        return None
    answer, reads, stamps = entry.get("answer"), entry.get("reads"), entry.get("stamps")
    if not (
        isinstance(answer, list)
        and len(answer) == 4
        and all(isinstance(a, str) for a in answer)
        and isinstance(reads, list)
        and isinstance(stamps, list)
    ):
        return None
    try:
        witness = Witness(
            tuple((str(path), content) for path, content in reads),
            tuple((str(path), stamp) for path, stamp in stamps),
        )
    except (ValueError, TypeError):
        return None
    if not unchanged(witness):
        return None
    top, index, commit, listed = answer
    return GitAnswer(top, index, commit, listed, kept=_kept(entry.get("kept")), witness=witness)


def _kept(value: object) -> Kept | None:
    if not (isinstance(value, list) and len(value) == 2):
        return None
    own, names = value
    if not (
        isinstance(own, list)
        and isinstance(names, list)
        and all(isinstance(n, str) for n in own)
        and all(isinstance(n, str) for n in names)
    ):
        return None
    return Kept(tuple(own), tuple(names))


def store(
    cache_dir: str,
    cwd: str,
    spec: str,
    answer: GitAnswer,
    *,
    git_dir: str,
    common_dir: str,
    ignored: str,
    started_ns: int,
    racy_window_ns: int,
    git: Git,
    kept: Kept | None = None,
) -> bool:
    """Keep ``answer`` for ``cwd`` and ``spec`` when it can be checked later (see the module);
    returns whether it was kept.

    Args:
        git_dir, common_dir: absolute paths of the work tree's git dir and common dir.
        ignored: ``git ls-files -o -i --exclude-standard --directory -z --full-name --
            <spec>`` in ``cwd``: the folders git does not traverse.
        started_ns: ``time.time_ns()`` before the git commands started; anything modified
            within ``racy_window_ns`` before it makes the answer unsafe to keep.
        git: runs a git command in ``cwd`` and returns its output, or None.
        kept: the names the snapshot kept of this answer, judged after the git commands
            started (a marker file created since then changes a stamped folder's modification
            time within the racy window, and the entry is not kept).
    """
    try:
        reads, stamps = _dependencies(cwd, spec, answer, git_dir, common_dir, ignored, git)
    except (_Uncacheable, OSError):
        return False
    horizon = started_ns - racy_window_ns
    for stamp in stamps.values():
        if stamp is not None and max(stamp[3], stamp[4]) >= horizon:
            return False
    entry: dict[str, object] = {
        "answer": [answer.top, answer.index, answer.commit, answer.listed],
        "reads": [[p, c] for p, c in reads.items()],
        "stamps": [[p, s] for p, s in stamps.items()],
    }
    if kept is not None:
        entry["kept"] = [list(kept.own), list(kept.names)]
    localcache.store(_entry_path(cache_dir, cwd, spec), entry)
    return True


def git_env() -> list[tuple[str, str]]:
    """The environment variables that change what git reads, sorted: part of an entry's key."""
    # Names first, values only of the few kept: items() encodes and decodes every pair.
    return sorted((k, os.environ[k]) for k in list(os.environ) if k.startswith("GIT_") or k in _ENV)


def _entry_path(cache_dir: str, cwd: str, spec: str) -> str:
    key = json.dumps([cwd, spec, git_env()], ensure_ascii=True)
    return localcache.entry_path(cache_dir, "git-listing", _digest(key))


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _stamp(path: str) -> Stamp:
    """(device, inode, size, mtime ns, ctime ns, mode) of what ``path`` names, or None when
    nothing is there."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode]


def _read(path: str) -> str | None:
    """A small file's text, None when nothing is there, a marker for a folder."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        return _DIRECTORY
    return data.decode("utf-8", "surrogateescape")


def _dependencies(
    cwd: str,
    spec: str,
    answer: GitAnswer,
    git_dir: str,
    common_dir: str,
    ignored: str,
    git: Git,
) -> tuple[dict[str, str | None], dict[str, Stamp]]:
    """(files read whole with their text, paths stat'ed with their stamps) that determine
    ``answer``; raises _Uncacheable when some dependency cannot be checked that way."""
    reads: dict[str, str | None] = {}
    stamps: dict[str, Stamp] = {}

    def read(path: str) -> str | None:
        reads[path] = _read(path)
        if reads[path] != _DIRECTORY:  # a git dir's own time moves with every lock file
            # Stamped too, so that a file rewritten after git answered (a commit moving the
            # branch while the listing ran) is within the racy window and the entry is not kept.
            stamps[path] = _stamp(path)
        return reads[path]

    def stamp(path: str) -> Stamp:
        stamps[path] = _stamp(path)
        return stamps[path]

    top = answer.top
    real = os.path.realpath(cwd)
    if os.path.commonpath([real, top]) != top:
        raise _Uncacheable("the folder is not below the work tree's top")
    stamp(cwd)
    folder = real
    while True:  # the folders git's discovery looks at, and their ignore files
        stamp(folder)
        stamp(os.path.join(folder, ".gitignore"))
        if folder == top:
            break
        folder = os.path.dirname(folder)
    read(os.path.join(top, ".git"))
    _head(read, stamp, git_dir, common_dir)
    stamp(os.path.join(cwd, answer.index))
    for name in _GIT_DIR_FILES:
        for d in {git_dir, common_dir}:
            stamp(os.path.join(d, *name.split("/")))
    configs = [os.path.join(d, n) for d in {git_dir, common_dir} for n in _GIT_DIR_CONFIGS]
    home = os.path.expanduser("~")
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    configs += [os.path.join(home, ".gitconfig"), os.path.join(xdg, "git", "config")]
    configs += [
        os.environ[v] for v in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM") if v in os.environ
    ]
    configs += _system_configs()
    # Settings given in the environment (``git -c``, GIT_CONFIG_COUNT) may set it too.
    mentions_excludes = any(k in os.environ for k in ("GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT"))
    for path in configs:
        stamp(path)
        text = (_read(path) or "").lower()
        if text == _DIRECTORY:
            continue
        if _INCLUDE.search(text):
            raise _Uncacheable(f"{path} includes other config files")
        mentions_excludes = mentions_excludes or "excludesfile" in text
    stamp(os.path.join(xdg, "git", "ignore"))
    if mentions_excludes:
        excludes = (git("config", "--path", "--get", "core.excludesFile") or "").strip()
        if excludes:
            if not os.path.isabs(excludes):
                raise _Uncacheable("a relative core.excludesFile")
            stamp(excludes)
    _traversed(stamp, top, top if spec == ":/" else real, ignored)
    return reads, stamps


#: Config files in the git dir and the common dir.
_GIT_DIR_CONFIGS = ("config", "config.worktree")
#: Other files in the git dir and the common dir that change what ``ls-files`` lists.
_GIT_DIR_FILES = (
    os.path.join("info", "exclude"),
    os.path.join("info", "sparse-checkout"),
    "commondir",
)
#: A config section that pulls in another file (``[include]``, ``[includeIf "..."]``).
_INCLUDE = re.compile(r"^\s*\[\s*include", re.MULTILINE)


def _head(
    read: Callable[[str], str | None],
    stamp: Callable[[str], Stamp],
    git_dir: str,
    common_dir: str,
) -> None:
    """Record what ``HEAD`` resolves through: its file and, on a branch, the branch's loose
    ref and ``packed-refs``."""
    if stamp(os.path.join(common_dir, "reftable")) is not None:
        raise _Uncacheable("refs kept in a reftable")
    head = (read(os.path.join(git_dir, "HEAD")) or "").strip()
    if head.startswith("ref:"):
        ref = head[4:].strip()
        if not ref.startswith("refs/heads/") or ref == "refs/heads/.invalid":
            raise _Uncacheable(f"HEAD names {ref!r}")
        loose = read(os.path.join(common_dir, *ref.split("/")))
        if loose is not None and not _COMMIT_ID.fullmatch(loose.strip()):
            raise _Uncacheable(f"{ref} is not a commit id")
        stamp(os.path.join(common_dir, "packed-refs"))
    elif not _COMMIT_ID.fullmatch(head):
        raise _Uncacheable("HEAD is neither a branch nor a commit id")


def _system_configs() -> list[str]:
    """The system config file's likely places: ``/etc/gitconfig``, and ``etc/gitconfig``
    under the prefix git was installed in."""
    found = ["/etc/gitconfig"]
    exe = shutil.which("git")
    if exe:
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(exe)))
        if prefix != "/usr":
            found.append(os.path.join(prefix, "etc", "gitconfig"))
    return found


def _traversed(stamp: Callable[[str], Stamp], top: str, start: str, ignored: str) -> None:
    """Stamp every folder below ``start`` that git traverses, and its ``.gitignore``.

    ``ignored`` lists (relative to ``top``) what is ignored, a folder as ``name/``; one with
    nothing listed below it is excluded as a whole (git does not look inside it, so nothing
    created there can change the listing), while a folder that holds only ignored files is
    listed along with them and is traversed.
    """
    names = sorted(n for n in ignored.split("\0") if n)
    skipped = {
        os.path.join(top, *n[:-1].split("/"))
        for i, n in enumerate(names)
        if n.endswith("/") and not (i + 1 < len(names) and names[i + 1].startswith(n))
    }
    folders = [start]
    seen = 0
    count = 0
    while folders:
        folder = folders.pop()
        count += 1
        if count > MAX_FOLDERS:
            raise _Uncacheable("too many folders")
        stamp(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                seen += 1
                if seen > MAX_ENTRIES:
                    raise _Uncacheable("too many entries")
                if entry.name == ".git":
                    continue
                if entry.name == ".gitignore":
                    stamp(entry.path)
                elif entry.is_dir(follow_symlinks=False) and entry.path not in skipped:
                    folders.append(entry.path)
