"""What jobs of a perimeter may use: GPUs, CPUs, memory, package indexes, image registries.

:func:`check_job` is what the compute submitter (``compute.submit``, ``compute.map``,
``flowlake run``) calls before it creates anything, with the job's resources and environment
and the lake the job is submitted through; the limits are those of the perimeter that lake was
opened in, from ``main``'s policy as it was when the lake was opened (like every plain write).
A lake without a policy has no limits.

The job's values are read by attribute (see :class:`JobResources`, :class:`JobEnvironment`), so
this module does not depend on :mod:`compute`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from store.errors import PolicyLimitError
from store.policy.enforce import DEFAULT_PERIMETER, PolicyBackend
from store.policy.model import Perimeter

if TYPE_CHECKING:
    from store.lake import Lake

GIB = 1024**3


class JobResources(Protocol):
    """What a job asks for (``compute.Resources``)."""

    @property
    def gpus(self) -> int: ...

    @property
    def cpus(self) -> float: ...

    @property
    def memory_bytes(self) -> int: ...


class JobEnvironment(Protocol):
    """Where a job's software comes from (``compute.Environment``)."""

    @property
    def pypi(self) -> dict[str, str]: ...

    @property
    def index_url(self) -> str | None: ...

    def index_urls(self) -> tuple[str, ...]: ...

    def image_name(self) -> str | None: ...


def check_job(lake: Lake, resources: JobResources, environment: JobEnvironment) -> None:
    """Refuse a job its perimeter does not allow; changes nothing.

    Args:
        lake: the lake the job is submitted through (its perimeter applies).
        resources: the job's GPUs, CPUs and memory.
        environment: the job's packages, package indexes and image.

    Raises:
        PolicyLimitError: the first limit the job breaks, naming the perimeter, the policy
            line, the limit and the job's value.
        PermissionDeniedError: the lake's principal may no longer act in its perimeter.
    """
    view = getattr(lake.backend, "_inner", None)
    if not isinstance(view, PolicyBackend):
        return
    policy = view._read_policy
    if policy is None:
        return
    perimeter = view._perimeter(policy)
    problem = _problem(perimeter, resources, environment)
    if problem is not None:
        name = view.identity.perimeter or DEFAULT_PERIMETER
        line = perimeter.line_of(problem.partition(" = ")[0])  # the limit's own line
        raise PolicyLimitError(
            f"perimeter {name!r} (policy line {line}) does not allow this job: {problem}"
        )


def _problem(
    perimeter: Perimeter, resources: JobResources, environment: JobEnvironment
) -> str | None:
    if perimeter.max_gpus is not None and resources.gpus > perimeter.max_gpus:
        return f"max_gpus = {perimeter.max_gpus}, the job asks for {resources.gpus} GPU(s)"
    if perimeter.max_cpus is not None and resources.cpus > perimeter.max_cpus:
        return f"max_cpus = {perimeter.max_cpus:g}, the job asks for {resources.cpus:g} CPU(s)"
    limit = perimeter.max_memory_gib
    if limit is not None and resources.memory_bytes > limit * GIB:
        return (
            f"max_memory_gib = {limit:g}, the job reserves "
            f"{resources.memory_bytes / GIB:.3g} GiB ({resources.memory_bytes} bytes)"
        )
    if perimeter.package_indexes:
        # A job that names no index installs from uv's default one, unless uv's configuration
        # on the building machine says otherwise: in a perimeter that lists indexes, a job that
        # installs packages names its index, so exactly the listed ones are used.
        if environment.pypi and environment.index_url is None:
            return (
                f"package_indexes = {list(perimeter.package_indexes)}, the job installs "
                f"packages without naming its index: set Environment(index_url=...)"
            )
        for url in environment.index_urls():
            if not any(_under(url, allowed) for allowed in perimeter.package_indexes):
                return (
                    f"package_indexes = {list(perimeter.package_indexes)}, the job's index is "
                    f"{url!r}"
                )
    image = environment.image_name()
    if (
        image is not None
        and perimeter.image_registries
        and not any(_under(image, allowed) for allowed in perimeter.image_registries)
    ):
        return (
            f"image_registries = {list(perimeter.image_registries)}, the job's image is "
            f"from {image!r}"
        )
    return None


def _under(value: str, allowed: str) -> bool:
    """Whether ``value`` is ``allowed`` or lies below it at a ``/`` (no partial host names)."""
    value = value.rstrip("/")
    return value == allowed or value.startswith(allowed + "/")
