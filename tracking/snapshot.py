"""The code snapshot of a run: the project's source files and, when there is one, its git commit.

Files are found with ``git ls-files`` (tracked plus untracked-but-not-ignored) inside a git
work tree, else by walking the folder; either way only source-like files below the size limits
are kept, so a data folder next to the code is not copied into every run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass

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
MAX_FILE_BYTES = 1 << 20
MAX_FILES = 2000
MAX_TOTAL_BYTES = 32 << 20
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
    """

    root: str
    git_commit: str | None
    git_dirty: bool | None
    files: tuple[SourceFile, ...]
    truncated: bool


def capture(root: str | os.PathLike[str] | None = None) -> CodeSnapshot:
    """Snapshot the project at ``root`` (default: the git work tree around the current folder,
    else the current folder)."""
    start = os.path.abspath(os.fspath(root) if root is not None else os.getcwd())
    top = _git(start, "rev-parse", "--show-toplevel")
    if top is not None and root is None:
        start = top.strip()
    commit = _git(start, "rev-parse", "HEAD") if top is not None else None
    dirty: bool | None = None
    if top is not None:
        status = _git(start, "status", "--porcelain", "--untracked-files=no", "--", ".")
        dirty = bool(status.strip()) if status is not None else None
    listed = _git(start, "ls-files", "-co", "--exclude-standard", "-z") if top else None
    names = listed.split("\0") if listed is not None else list(_walk(start))
    files, truncated = _read_files(start, sorted(n for n in names if n))
    return CodeSnapshot(
        root=start,
        git_commit=commit.strip() if commit else None,
        git_dirty=dirty,
        files=tuple(files),
        truncated=truncated,
    )


def _read_files(root: str, names: list[str]) -> tuple[list[SourceFile], bool]:
    files: list[SourceFile] = []
    total = 0
    truncated = False
    for name in names:
        parts = name.split("/")
        if (
            any(p in SKIP_DIRS for p in parts[:-1])
            or os.path.splitext(name)[1] not in SOURCE_SUFFIXES
        ):
            continue
        full = os.path.join(root, name)
        try:
            if not os.path.isfile(full) or os.path.islink(full):
                continue
            size = os.path.getsize(full)
            if size > MAX_FILE_BYTES:
                truncated = True
                continue
            if len(files) >= MAX_FILES or total + size > MAX_TOTAL_BYTES:
                return files, True
            with open(full, "rb") as f:
                data = f.read()
        except OSError:
            continue
        total += len(data)
        files.append(SourceFile(name, data, hashlib.sha256(data).hexdigest()))
    return files, truncated


def _walk(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for filename in filenames:
            out.append(filename if rel == "." else f"{rel}/{filename}".replace(os.sep, "/"))
            if len(out) > MAX_FILES * 10:
                return out
    return out


def _git(cwd: str, *args: str) -> str | None:
    """Output of a git command, or None when git is absent or this is not a work tree."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "surrogateescape")
