"""The values submitter and job runner share: resources, environments, statuses, the job spec.

:class:`JobSpec` is the one serialised description of a job: the submitter writes it once (as
JSON, next to the pickled callable), and the supervisor and the runner on the other side read
it. Nothing else crosses between the two worlds except the job's status and outcome files.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from compute.errors import ResourceError
from store.errors import InvalidArgumentError

#: Program names a command job runs with the job's own interpreter.
PYTHON_NAMES = ("python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}")

#: Bumped when the spec's fields change incompatibly.
SPEC_VERSION = 1

_UNITS = {
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# ASCII: "\d" would take other scripts' digits ("٤GiB"), which int() reads, too.
_MEMORY = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$", re.ASCII)
_INDEX_URL = re.compile(r"^(https?://[^\s/@]+|file://)[^\s@]*$")
_IMAGE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_PACKAGE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(\[[A-Za-z0-9,._-]+\])?$")


class JobStatus(StrEnum):
    """Where a job is. ``succeeded``, ``failed``, ``cancelled`` and ``killed`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    KILLED = "killed"

    @property
    def is_final(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


def parse_memory(value: int | str | None) -> int:
    """Bytes from ``4GiB``, ``512MB``, ``1e9``-style integers or None (0: no reservation).

    Raises:
        ResourceError: negative, not a size, or a string without a unit (``"4"``).
    """
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ResourceError(f"memory must be a size such as '4GiB', not {value!r}")
    if isinstance(value, numbers.Real):  # numpy's integers and floats too
        if not math.isfinite(value) or value < 0:
            raise ResourceError(f"memory must be a finite number of bytes >= 0, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ResourceError(f"memory must be a size such as '4GiB', not {value!r}")
    match = _MEMORY.match(value)
    unit = match.group(2).lower() if match else ""
    if match is not None and match.group(1).startswith("-"):
        raise ResourceError(f"memory must not be negative, got {value!r}")
    if match is not None and not unit:  # 4 what? bytes are rarely meant; say which form
        raise ResourceError(
            f"memory {value!r} has no unit: give a size such as '{value.strip()}GiB' or "
            f"'{value.strip()}MiB' (or bytes: '{value.strip()}B', or an int)"
        )
    if match is None or unit not in _UNITS:
        raise ResourceError(
            f"memory {value!r} is not a size such as '512MiB' or '4GiB' (units: "
            "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Resources:
    """What a job needs while it runs; never oversubscribed.

    Attributes:
        gpus: whole GPUs (each job sees only its own through ``CUDA_VISIBLE_DEVICES``).
        cpus: CPU cores (fractions allowed).
        memory: bytes of memory to reserve; give an int or a size such as ``"4GiB"`` (0: none).

    Raises:
        ResourceError: a negative, non-finite or malformed value.
    """

    gpus: int = 0
    cpus: float = 1.0
    memory: int | str = 0

    def __post_init__(self) -> None:
        # numbers.Integral / Real: a sweep's values are often numpy's (np.int64(1)).
        gpus = self.gpus
        if isinstance(gpus, bool) or not isinstance(gpus, numbers.Integral) or gpus < 0:
            raise ResourceError(f"gpus must be a whole number >= 0, got {gpus!r}")
        object.__setattr__(self, "gpus", int(gpus))
        cpus = self.cpus
        if (
            isinstance(cpus, bool)
            or not isinstance(cpus, numbers.Real)
            or not math.isfinite(cpus)
            or cpus < 0
        ):
            raise ResourceError(f"cpus must be a finite number >= 0, got {cpus!r}")
        object.__setattr__(self, "cpus", float(cpus))
        object.__setattr__(self, "memory", parse_memory(self.memory))

    @property
    def memory_bytes(self) -> int:
        return int(self.memory)

    def describe(self) -> str:
        """A short human form: ``gpus=1 cpus=2 memory=4.0GiB``."""
        parts = [f"gpus={self.gpus}", f"cpus={self.cpus:g}"]
        if self.memory_bytes:
            parts.append(f"memory={self.memory_bytes / 1024**3:.1f}GiB")
        return " ".join(parts)


@dataclass(frozen=True)
class Environment:
    """The Python environment a job runs in.

    Attributes:
        pypi: distributions to install, name -> version spec: ``"1.7.*"``, ``"==2.0"``,
            ``">=1,<2"`` or ``""`` for any. Empty: the submitter's interpreter, as it is.
        index_url: the package index (PEP 503 simple API, ``http(s)://`` or ``file://``) the
            packages come from; None: uv's default (PyPI, unless uv's own configuration on the
            building machine says otherwise). When given, uv's ambient index configuration is
            ignored, so exactly these indexes are used. Requires ``pypi``.
        extra_index_urls: more indexes, after ``index_url`` (requires ``index_url``).
        image: a container image reference (``registry/repository:tag``) the job should run
            in. No compute backend runs container images yet: a job naming one is refused at
            submit, after the perimeter's ``image_registries`` are checked.

    Raises:
        InvalidArgumentError: a malformed name, spec, index URL (credentials in it included:
            give them to uv through its environment or netrc) or image reference; one package
            named twice (names compared as installers do); an index without packages.
    """

    pypi: dict[str, str] = field(default_factory=dict)
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    image: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pypi, dict):
            raise InvalidArgumentError("Environment(pypi=...) takes a dict of name -> version")
        for name, spec in self.pypi.items():
            if not isinstance(name, str) or not _PACKAGE.match(name):
                raise InvalidArgumentError(f"{name!r} is not a package name")
            if not isinstance(spec, str) or any(c in spec for c in "\n\r;#@ "):
                raise InvalidArgumentError(f"{spec!r} is not a version spec for {name}")
            _check_version_spec(name, spec)
        _refuse_same_package(self.pypi)
        object.__setattr__(self, "pypi", dict(sorted(self.pypi.items())))
        if isinstance(self.extra_index_urls, str) or not isinstance(
            self.extra_index_urls, list | tuple
        ):
            raise InvalidArgumentError("extra_index_urls takes a list of index URLs")
        object.__setattr__(self, "extra_index_urls", tuple(self.extra_index_urls))
        if self.extra_index_urls and self.index_url is None:
            raise InvalidArgumentError("extra_index_urls needs index_url (the main index)")
        if self.index_url is not None and not self.pypi:
            # Without packages the job runs the submitter's interpreter: the index would be
            # ignored without a word.
            raise InvalidArgumentError(
                f"index_url {self.index_url!r} is where pypi packages come from, and no package "
                "is named: give pypi={...} too, or leave the index out"
            )
        for url in self.index_urls():
            if not isinstance(url, str) or not _INDEX_URL.match(url):
                raise InvalidArgumentError(
                    f"{url!r} is not a package index URL (http://, https:// or file://, "
                    "no spaces, no user:password@: give credentials to uv, not the job spec)"
                )
        if self.image is not None and (
            not isinstance(self.image, str) or not _IMAGE.match(self.image)
        ):
            raise InvalidArgumentError(
                f"{self.image!r} is not a container image reference such as "
                "'ghcr.io/acme/train:1.2' or 'python:3.12-slim'"
            )

    def __hash__(self) -> int:
        return hash((tuple(self.pypi.items()), self.index_urls(), self.image))

    @classmethod
    def as_recorded(cls, fields: dict[str, Any]) -> Environment:
        """The environment a job spec recorded, checked again; one that no longer passes
        (a version spec refused since the job was submitted, say ``"=="``: that job failed
        building it) is kept as recorded, so its job stays listable."""
        try:
            return cls(**fields)
        except InvalidArgumentError:
            recorded = object.__new__(cls)
            for name in cls.__dataclass_fields__:
                value = fields.get(name, cls.__dataclass_fields__[name].default)
                if name == "pypi":
                    value = dict(fields.get("pypi") or {})
                elif name == "extra_index_urls":
                    value = tuple(value)
                object.__setattr__(recorded, name, value)
            return recorded

    @property
    def is_default(self) -> bool:
        """Whether the job simply uses the submitter's interpreter."""
        return not self.pypi

    def index_urls(self) -> tuple[str, ...]:
        """``index_url`` then ``extra_index_urls``; empty when the job names no index."""
        return ((self.index_url,) if self.index_url is not None else ()) + self.extra_index_urls

    def image_name(self) -> str | None:
        """The image's ``registry/repository`` without tag or digest, with Docker's default
        registry made explicit (``python:3.12`` -> ``docker.io/library/python``)."""
        if self.image is None:
            return None
        name = self.image.split("@", 1)[0]
        head, _, last = name.rpartition("/")
        name = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
        first = name.split("/", 1)[0]
        if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
            name = f"docker.io/{name if '/' in name else 'library/' + name}"
        return name

    def requirements(self) -> list[str]:
        """The spec as requirement lines: ``{"a": "1.7.*"}`` -> ``["a==1.7.*"]``."""
        return [name + _specifier(spec) for name, spec in self.pypi.items()]


def _specifier(spec: str) -> str:
    """A version spec as a requirement line writes it: ``"1.7.*"`` -> ``"==1.7.*"``,
    ``"*"`` -> ``""``."""
    text = spec.strip()
    if not text or text == "*":
        return ""
    return f"=={text}" if text[0].isdigit() else text


def _refuse_same_package(pypi: dict[str, str]) -> None:
    """Refuse two entries for one distribution (``NumPy`` and ``numpy``, ``a_b`` and ``a-b``:
    installers compare names normalised), which uv would only refuse in the job's build.

    Raises:
        InvalidArgumentError: names both entries.
    """
    seen: dict[str, str] = {}
    for name in pypi:
        key = re.sub(r"[-_.]+", "-", name.split("[", 1)[0]).lower()
        if key in seen:
            raise InvalidArgumentError(
                f"pypi names the package {key!r} twice ({seen[key]!r} and {name!r}): "
                "give it once, with one version spec"
            )
        seen[key] = name


def _check_version_spec(name: str, spec: str) -> None:
    """Refuse a spec that no installer can parse (``"=="``, ``"=1"``, ``"~=1"``) at submit,
    rather than in the job's environment build.

    Raises:
        InvalidArgumentError: names the requirement and what is wrong with it.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    why = None
    try:  # its message names the bad part ("Invalid specifier: '=='")
        SpecifierSet(_specifier(spec))
    except InvalidSpecifier as exc:
        why = str(exc)
    if why is None:
        try:  # stricter, as installers are (">=1,,<2" is refused)
            Requirement(name + _specifier(spec))
        except InvalidRequirement as exc:
            why = str(exc).splitlines()[0]
    if why is not None:
        raise InvalidArgumentError(
            f"requirement {name + _specifier(spec)!r} does not parse: {why} (a version spec is "
            "such as '==4.9.0', '1.7.*', '>=1,<2' or '' for any)"
        )


@dataclass(frozen=True)
class JobSpec:
    """Everything a job runner needs, written once by the submitter.

    Attributes:
        job_id: 32 hex digits.
        name: a human-readable name, or None.
        backend: ``local`` or ``ray``.
        lake_location: what :func:`store.open` takes to open the lake again.
        namespace: the submitter's namespace; the job works in it.
        user: the login commits are attributed to.
        input_ref: the ref as given.
        input_commit: the full commit id it resolved to at submit (the job reads this).
        output_branch: the full name of the branch a successful job merges into.
        kind: ``callable`` (the pickled callable ``payload.pkl`` in the job folder) or
            ``command``.
        command: the command's argv (kind ``command``).
        code_snapshot: the id of the code snapshot the job runs (see :mod:`compute.code`).
        resources, environment: what the job needs.
        retries: how many times a failed attempt is tried again.
        timeout: seconds an attempt may run, or None.
        submitted_at: unix seconds.
        submitter_python: the submitter's ``sys.executable``.
        perimeter: the policy perimeter the submitter's lake was opened in (the job reopens
            it there), or None on a lake opened in none.
        principal: who the submitter's lake acts as (``user:<login>`` or ``token:<name>``);
            the job must reopen the lake as the same one. A token's secret is never here:
            it reaches the job only through ``FLOWLAKE_TOKEN`` in its environment.
        workdir: the folder the job starts in, relative to the snapshot's root (``/``
            separated; "" for the root): the submitter's folder when it lies inside the project,
            so ``flowlake run -- python train.py`` from ``src/`` runs ``src/train.py``.
    """

    job_id: str
    name: str | None
    backend: str
    lake_location: str
    namespace: str
    user: str
    input_ref: str
    input_commit: str
    output_branch: str
    kind: str
    command: tuple[str, ...]
    code_snapshot: str
    resources: Resources
    environment: Environment
    retries: int
    timeout: float | None
    submitted_at: float
    submitter_python: str
    perimeter: str | None = None
    principal: str | None = None
    workdir: str = ""
    version: int = SPEC_VERSION

    def to_json(self) -> str:
        # Field by field: ``dataclasses.asdict`` deep-copies every value on the way (5x the
        # time, ~40 us a submit); the JSON is the same.
        data = _fields(self)
        data["resources"] = _fields(self.resources)
        data["environment"] = _fields(self.environment)
        data["command"] = list(self.command)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """Raises: InvalidArgumentError when the spec's version is not this one's."""
        data: dict[str, Any] = json.loads(text)
        if data.get("version") != SPEC_VERSION:
            raise InvalidArgumentError(
                f"job spec version {data.get('version')} is not {SPEC_VERSION}; "
                "submitter and runner run different flowlake versions"
            )
        data["resources"] = Resources(**data["resources"])
        data["environment"] = Environment.as_recorded(data["environment"])
        data["command"] = tuple(data["command"])
        return cls(**data)


def _fields(value: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict (one level: its values as they are)."""
    return {name: getattr(value, name) for name in value.__dataclass_fields__}
