"""A perimeter's compute limits, enforced when a job is submitted: GPUs, CPUs, memory, package
indexes and image registries. A refused job names the perimeter, the limit and the value, and
creates nothing (no job, no branch); the allowed job runs.

Also the package index a job names is the one its environment is built from (a local PEP 503
index served on 127.0.0.1).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_policy_enforce import admin, reopen
from typer.testing import CliRunner

import compute
import store
from compute import envs
from compute.model import Environment, Resources
from store.errors import InvalidArgumentError, PolicyError, PolicyLimitError
from store.policy.limits import check_job
from store.policy.parse import parse_policy
from ui.cli import app

INDEX = "https://pypi.example.org/simple"
POLICY = """\
version = 1

[perimeters.production]
principals = ["{admin}"]
write = ["production/**", "user:*/**"]
max_gpus = 2
max_cpus = 4
max_memory_gib = 8
package_indexes = ["{index}"]
image_registries = ["ghcr.io/acme"]

[perimeters.staging]
principals = ["*"]
write = ["user:*/**"]
max_gpus = 0
"""


pytestmark = pytest.mark.usefixtures("declared_machine")


def limited(lake: store.Lake, access: object) -> store.Lake:
    """Install the policy above; returns the lake reopened in the production perimeter."""
    setup = lake.branch("setup")
    setup.write_bytes(
        "_flowlake/policy.toml", POLICY.format(admin=admin(lake), index=INDEX).encode()
    )
    setup.commit("policy")
    lake.merge(setup.name, into="main")
    return reopen(access, perimeter="production")


def double(x: int) -> int:
    return 2 * x


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"resources": Resources(gpus=3)}, r"max_gpus = 2, the job asks for 3 GPU"),
    ({"resources": Resources(cpus=6)}, r"max_cpus = 4, the job asks for 6 CPU"),
    ({"resources": Resources(memory="9GiB")}, r"max_memory_gib = 8, the job reserves 9 GiB"),
    (
        {"environment": Environment(pypi={"numpy": ""}, index_url="https://evil.example/simple")},
        r"package_indexes = \['https://pypi.example.org/simple'\], the job's index is "
        r"'https://evil.example/simple'",
    ),
    (
        {
            "environment": Environment(
                pypi={"numpy": ""},
                index_url=INDEX,
                extra_index_urls=["https://pypi.example.org.evil/simple"],
            )
        },
        r"the job's index is 'https://pypi.example.org.evil/simple'",
    ),
    ({"environment": Environment(pypi={"numpy": ""})}, r"without naming its index"),
    (
        {"environment": Environment(image="docker.io/acme/train:1")},
        r"image_registries = \['ghcr.io/acme'\], the job's image is from 'docker.io/acme/train'",
    ),
    ({"environment": Environment(image="python:3.12")}, r"from 'docker.io/library/python'"),
]


def test_jobs_beyond_the_perimeters_limits_are_refused_and_create_nothing(
    lake: store.Lake, lake_access: object
) -> None:
    prod = limited(lake, lake_access)
    branches = {b.name for b in prod.branches(all_namespaces=True)}
    for kwargs, message in REFUSED:
        with pytest.raises(PolicyLimitError, match=rf"perimeter 'production' .*{message}"):
            compute.submit(double, {"x": 1}, lake=prod, **kwargs)
        with pytest.raises(PermissionError, match=message):
            compute.map(double, [{"x": 1}, {"x": 2}], lake=prod, **kwargs)
    # The refusal names the line of the limit itself (POLICY's lines 6-8 and 15).
    for resources, line in (
        (Resources(gpus=3), 6),
        (Resources(cpus=6), 7),
        (Resources(memory="9GiB"), 8),
    ):
        with pytest.raises(PolicyLimitError, match=rf"\(policy line {line}\)"):
            compute.submit(double, {"x": 1}, lake=prod, resources=resources)
    staging = reopen(lake_access, perimeter="staging")
    with pytest.raises(
        PolicyLimitError, match=r"perimeter 'staging' \(policy line 15\).*max_gpus = 0"
    ):
        compute.submit(double, {"x": 1}, lake=staging, resources=Resources(gpus=1))
    assert compute.jobs(prod) == []
    assert {b.name for b in prod.branches(all_namespaces=True)} == branches
    # Within every limit the check passes; an allowed image is refused only because no backend
    # runs images yet.
    check_job(
        prod,
        Resources(gpus=2, cpus=4, memory="8GiB"),
        Environment(pypi={"numpy": ""}, index_url=INDEX + "/"),
    )
    check_job(prod, Resources(), Environment(image="ghcr.io/acme/train:1"))
    with pytest.raises(store.errors.UnsupportedOperationError, match="container images"):
        compute.submit(double, {"x": 1}, lake=prod, environment=Environment(image="ghcr.io/acme/t"))
    staging.close()
    prod.close()


def test_the_allowed_job_runs_and_flowlake_run_refuses_the_rest(
    embedded_lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Access:
        location = embedded_lake.location

    prod = limited(embedded_lake, Access)
    job = compute.submit(double, {"x": 21}, lake=prod, resources=Resources(gpus=2, cpus=1))
    assert job.wait(timeout=120) == 42
    monkeypatch.setenv("FLOWLAKE_PERIMETER", "production")
    refused = CliRunner().invoke(app, ["run", "--gpus", "3", "--lake", prod.location, "--", "true"])
    assert refused.exit_code != 0
    assert "max_gpus = 2, the job asks for 3 GPU(s)" in str(refused.output) + str(refused.exception)
    assert len(compute.jobs(prod)) == 1
    prod.close()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_cpus = -1", "max_cpus must be a number >= 0"),
        ('max_memory_gib = "8GiB"', "max_memory_gib must be a number >= 0"),
        ('package_indexes = ["pypi.org/simple"]', "is not an index URL"),
        ('image_registries = ["https://ghcr.io"]', "is not a registry"),
    ],
)
def test_malformed_limits_name_their_line(line: str, message: str) -> None:
    text = POLICY.format(admin="*", index=INDEX).replace("max_gpus = 0", line)
    with pytest.raises(PolicyError, match=rf"policy line 15: .*{message}"):
        parse_policy(text)


def test_malformed_index_urls_and_images_are_refused() -> None:
    for kwargs in (
        {"index_url": "https://user:secret@pypi.example.org/simple"},
        {"index_url": "pypi.org/simple"},
        {"extra_index_urls": ["https://x/simple"]},
        {"image": "Not An Image"},
    ):
        with pytest.raises(InvalidArgumentError):
            Environment(pypi={"a": ""}, **kwargs)  # type: ignore[arg-type]


# -- the index a job names is the one it installs from ------------------------------------------


def _wheel(name: str, version: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel of ``name`` holding a module that says its version."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{name.replace('-', '_')}.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{dist}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return f"{dist}-py3-none-any.whl", buffer.getvalue()


@pytest.fixture
def local_index(tmp_path: Path) -> Iterator[str]:
    """A PEP 503 simple index on 127.0.0.1 holding one package, ``flowlake-probe`` 0.3."""
    root = tmp_path / "index"
    project = root / "simple" / "flowlake-probe"
    project.mkdir(parents=True)
    filename, data = _wheel("flowlake-probe", "0.3")
    (project / filename).write_bytes(data)
    (project / "index.html").write_text(f'<a href="{filename}">{filename}</a>\n')
    (root / "simple" / "index.html").write_text('<a href="flowlake-probe/">flowlake-probe</a>\n')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()
    server.server_close()


def test_an_environment_is_built_from_exactly_the_index_it_names(
    local_index: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWLAKE_ENV_CACHE", str(tmp_path / "envs"))
    # Ambient uv configuration pointing elsewhere is ignored for a job that names its index.
    monkeypatch.setenv("UV_EXTRA_INDEX_URL", "http://127.0.0.1:9/simple")
    environment = Environment(pypi={"flowlake-probe": ""}, index_url=local_index)
    resolved = envs.resolve(environment)
    assert "flowlake-probe==0.3" in resolved and f"--index-url {local_index}" in resolved
    python = envs.ensure(environment)
    import subprocess

    done = subprocess.run(
        [str(python), "-c", "import flowlake_probe; print(flowlake_probe.VERSION)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "0.3"
