"""Job environments: isolated virtual environments built with ``uv``, cached and reused.

The spec is resolved first (``uv pip compile``), and the venv is cached under a hash of the
*resolved* requirements and the interpreter, so two specs that resolve alike share a venv and a
spec whose resolution moves gets a new one. The venv is built next to the cache under a
temporary name and renamed into place once complete, under a per-environment file lock, so
concurrent jobs build it once and nobody uses half of one.

The job's packages come first on its ``sys.path``; flowlake itself and the submitter's other
packages come after them (a ``.pth`` file adds the submitter's site folders), so the job can
still run flowlake's runner while every package it pinned shadows the submitter's copy.

An ``Environment`` that names its package indexes (``index_url``, ``extra_index_urls``) is
resolved and installed from exactly those: uv's configuration files and ambient index
variables are ignored for it, and the lock (hence the cache key) records the indexes.

The cache lives in ``FLOWLAKE_ENV_CACHE``, else ``~/.cache/flowlake/envs``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
import sys
import uuid
from pathlib import Path

from filelock import FileLock

from compute.errors import EnvironmentBuildError
from compute.model import Environment
from store.errors import NotInstalledError

UV_TIMEOUT_S = 600
COMPLETE = ".flowlake-complete"
REQUIREMENTS = "requirements.lock"


def cache_dir() -> Path:
    override = os.environ.get("FLOWLAKE_ENV_CACHE")
    path = Path(override) if override else Path.home() / ".cache" / "flowlake" / "envs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def uv_binary() -> str:
    """The ``uv`` executable (from the ``uv`` package, else PATH).

    Raises:
        NotInstalledError: uv is not installed.
    """
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise NotInstalledError("job environments need uv: pip install 'flowlake[compute]'")


#: uv's ambient index settings, dropped when a job names its indexes (so only those are used).
AMBIENT_INDEX_VARIABLES = (
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
)


def _index_args(environment: Environment) -> list[str]:
    """uv options naming exactly the job's indexes (none when it names none)."""
    if environment.index_url is None:
        return []
    args = ["--no-config", "--index-url", environment.index_url]
    for url in environment.extra_index_urls:
        args += ["--extra-index-url", url]
    return args


def _uv(*args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1"}
    if "--no-config" in args:
        for name in AMBIENT_INDEX_VARIABLES:
            env.pop(name, None)
    try:
        done = subprocess.run(
            [uv_binary(), *args],
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            timeout=UV_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentBuildError(f"uv {args[0]} took more than {UV_TIMEOUT_S} s") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise EnvironmentBuildError(f"the environment cannot be built: {message}")
    return done.stdout.decode("utf-8", "replace")


def resolve(environment: Environment, python: str = sys.executable) -> str:
    """The spec resolved to exact pins (``uv pip compile`` output, without comments).

    Raises:
        EnvironmentBuildError: the spec does not resolve (uv's message).
    """
    out = _uv(
        "pip",
        "compile",
        "-",
        "--python",
        python,
        "--quiet",
        "--no-header",
        "--no-annotate",
        *(["--emit-index-url", *_index_args(environment)] if environment.index_url else []),
        stdin="\n".join(environment.requirements()) + "\n",
    )
    lines = [line.strip() for line in out.splitlines()]
    return "\n".join(line for line in lines if line and not line.startswith("#")) + "\n"


def env_key(resolved: str, python: str = sys.executable) -> str:
    h = hashlib.sha256()
    h.update(f"{python}\0{sys.version}\0{resolved}".encode())
    return h.hexdigest()[:24]


def ensure(environment: Environment) -> Path:
    """The Python interpreter of a venv holding ``environment``, built when not cached.

    Raises:
        EnvironmentBuildError: the spec does not resolve or install (uv's message).
        NotInstalledError: uv is missing.
    """
    resolved = resolve(environment)
    root = cache_dir()
    target = root / env_key(resolved)
    python = target / "bin" / "python"
    if (target / COMPLETE).is_file():
        return python
    with FileLock(str(root / f"{target.name}.lock")):
        if (target / COMPLETE).is_file():
            return python
        # Whoever built under this lock before and left a half-built venv was killed mid-build
        # (SIGKILL skips the cleanup below); none is in use, as only the lock holder builds.
        for stale in root.glob(f".{target.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{target.name}.{uuid.uuid4().hex[:8]}"
        try:
            _uv("venv", "--quiet", "--python", sys.executable, str(tmp))
            lock_file = tmp / REQUIREMENTS
            lock_file.write_text(resolved)
            _uv(
                "pip",
                "install",
                "--quiet",
                *_index_args(environment),
                "--python",
                str(tmp / "bin" / "python"),
                "-r",
                str(lock_file),
            )
            _add_base_layer(tmp)
            (tmp / COMPLETE).write_text(resolved)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return python


def _add_base_layer(venv: Path) -> None:
    """Put the submitter's site folders after the venv's own on the job's ``sys.path``."""
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    targets = list(venv.glob("lib/python*/site-packages"))
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    for target in targets:
        (target / "zz_flowlake_base.pth").write_text(lines)


def resolved_versions(python: str | os.PathLike[str]) -> str:
    """The lock file of the venv whose interpreter is ``python``."""
    return (Path(python).parent.parent / REQUIREMENTS).read_text()
