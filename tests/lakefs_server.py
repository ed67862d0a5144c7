"""Start a real lakeFS server for tests, and hand out repositories and S3-gateway settings.

The server is the lakeFS release built by ``scripts/build-lakefs.sh`` (cached per version), run
on ``127.0.0.1`` with a free port, local KV metadata and a local blockstore under a temporary
folder, usage statistics off, and admin credentials created at first start. Readiness is decided
by polling ``/_health``; the process is stopped by the pid this module started.
"""

from __future__ import annotations

import os
import secrets
import socket
import string
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build-lakefs.sh"
#: Exit status of the build script when Go is not on PATH.
_NO_GO_STATUS = 3
START_TIMEOUT_S = 60.0
BUILD_TIMEOUT_S = 3600.0


class LakeFSUnavailableError(RuntimeError):
    """The lakeFS binary cannot be had here (no Go toolchain and no cached build)."""


@dataclass(frozen=True)
class LakeFSServer:
    """A running lakeFS server this process started.

    Attributes:
        endpoint: base URL, e.g. ``http://127.0.0.1:38211`` (API under ``/api/v1``; the S3 gateway
            answers on the same URL).
        access_key_id: admin access key (also the S3 gateway key).
        secret_access_key: admin secret key.
        process: the server process.
        data_dir: where metadata, blocks and the log live; lakeFS may import objects from
            ``data_dir / "external"`` (``local://`` imports).
        gate_key: the key in the server's ``LAKEFSACTION_FLOWLAKE_GATE_KEY``, for flowlake's
            gate hook (``store.backends.lakefs.gatehook``); random per server.
    """

    endpoint: str
    access_key_id: str
    secret_access_key: str
    process: subprocess.Popen[bytes] = field(repr=False)
    data_dir: Path
    gate_key: str = field(default="", repr=False)

    def open_lake(self, repository: str, namespace: str | None = None) -> Any:
        """``store.open`` a new lake in a new repository of this server (main protected)."""
        import store

        return store.open(
            f"lakefs://{repository}",
            namespace=namespace,
            endpoint=self.endpoint,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            create=True,
            storage_namespace=f"local://{repository}",
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server process (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def lakefs_binary() -> Path:
    """The lakeFS server binary: ``$FLOWLAKE_LAKEFS_BIN``, else build (or reuse) the cached one.

    Raises:
        LakeFSUnavailableError: Go is missing and nothing is cached.
        RuntimeError: the build failed (the message holds the build's stderr tail).
    """
    override = os.environ.get("FLOWLAKE_LAKEFS_BIN")
    if override:
        return Path(override)
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode == _NO_GO_STATUS:
        raise LakeFSUnavailableError(result.stderr.strip())
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-lakefs.sh failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _access_key_id() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "AKIAFL" + "".join(secrets.choice(alphabet) for _ in range(14))


def _server_env(data_dir: Path, port: int, key: str, secret: str, gate_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFS_", "LAKEFSACTION_"))}
    env.update(
        {
            "LAKEFS_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "LAKEFS_DATABASE_TYPE": "local",
            "LAKEFS_DATABASE_LOCAL_PATH": str(data_dir / "metadata"),
            "LAKEFS_BLOCKSTORE_TYPE": "local",
            "LAKEFS_BLOCKSTORE_LOCAL_PATH": str(data_dir / "block"),
            "LAKEFS_COMMITTED_LOCAL_CACHE_DIR": str(data_dir / "cache"),
            "LAKEFS_COMMITTED_SSTABLE_MEMORY_CACHE_SIZE_BYTES": str(64 * 1024 * 1024),
            "LAKEFS_AUTH_ENCRYPT_SECRET_KEY": secrets.token_hex(32),
            "LAKEFS_INSTALLATION_USER_NAME": "flowlake-admin",
            "LAKEFS_INSTALLATION_ACCESS_KEY_ID": key,
            "LAKEFS_INSTALLATION_SECRET_ACCESS_KEY": secret,
            "LAKEFS_STATS_ENABLED": "false",
            "LAKEFS_USAGE_REPORT_ENABLED": "false",
            "LAKEFS_EMAIL_SUBSCRIPTION_ENABLED": "false",
            "LAKEFS_SECURITY_CHECK_LATEST_VERSION": "false",
            "LAKEFS_LOGGING_LEVEL": "WARN",
            # Imports from local paths under external/ (tests of what may change main).
            "LAKEFS_BLOCKSTORE_LOCAL_IMPORT_ENABLED": "true",
            "LAKEFS_BLOCKSTORE_LOCAL_ALLOWED_EXTERNAL_PREFIXES": str(data_dir / "external"),
            # Read by the gate hook's action arguments ({{ ENV.LAKEFSACTION_... }}).
            "LAKEFSACTION_FLOWLAKE_GATE_KEY": gate_key,
        }
    )
    return env


def _wait_healthy(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    delay = 0.05
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lakeFS exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{endpoint}/_health", timeout=2) as resp:
                if resp.status == 204 or resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise RuntimeError(f"lakeFS not healthy after {START_TIMEOUT_S}s:\n{_tail(log)}")


def _tail(log: Path, size: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


def start_lakefs(data_dir: Path | str) -> LakeFSServer:
    """Start a fresh lakeFS with its state under ``data_dir`` and wait until it is healthy.

    Raises:
        LakeFSUnavailableError: no Go toolchain to build lakeFS and no cached binary.
        RuntimeError: the build failed, or the server exited or never became healthy.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = lakefs_binary()
    port = _free_port()
    key, secret = _access_key_id(), secrets.token_urlsafe(30)
    gate_key = secrets.token_hex(32)
    endpoint = f"http://127.0.0.1:{port}"
    log = data_dir / "lakefs.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [str(binary), "run"],
            env=_server_env(data_dir, port, key, secret, gate_key),
            cwd=data_dir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = LakeFSServer(endpoint, key, secret, process, data_dir, gate_key)
    try:
        _wait_healthy(endpoint, process, log)
    except BaseException:
        server.stop()
        raise
    return server


def start_lakefs_or_skip(data_dir: Path | str) -> LakeFSServer:
    """:func:`start_lakefs` for fixtures: skip without Go locally, fail without it under CI."""
    try:
        return start_lakefs(data_dir)
    except LakeFSUnavailableError as exc:
        reason = (
            f"lakeFS tests need a Go toolchain to build the server ({exc}); install Go "
            "(https://go.dev/dl/) and rerun, or set FLOWLAKE_LAKEFS_BIN to a lakeFS binary"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)


def client_for(server: LakeFSServer) -> Any:
    """A ``lakefs.Client`` logged in as the server's admin."""
    import lakefs

    return lakefs.Client(
        host=server.endpoint,
        username=server.access_key_id,
        password=server.secret_access_key,
    )


def new_repository(server: LakeFSServer, name: str | None = None) -> str:
    """Create an empty repository (default branch ``main``, one initial commit); return its name."""
    import lakefs_sdk

    name = name or f"t-{uuid.uuid4().hex[:16]}"
    sdk = client_for(server).sdk_client
    sdk.repositories_api.create_repository(
        lakefs_sdk.RepositoryCreation(  # type: ignore[call-arg]
            name=name, storage_namespace=f"local://{name}", default_branch="main"
        )
    )
    return name


def s3_storage_options(server: LakeFSServer) -> dict[str, Any]:
    """``storage_options`` for s3fs that talk to the lakeFS S3 gateway as the admin.

    The bucket is a repository and the first key part a branch or commit:
    ``s3://<repository>/main/path/in/lake``.
    """
    return {
        "key": server.access_key_id,
        "secret": server.secret_access_key,
        "endpoint_url": server.endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
        "config_kwargs": {"s3": {"addressing_style": "path"}},
        # Objects also change through the lakeFS API; a cached listing would hide them.
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
