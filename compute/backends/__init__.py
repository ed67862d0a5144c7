"""Executors, looked up by name from a table of dotted paths and imported only when used.

An executor starts a submitted job somewhere; everything else (validation, pinning, code
snapshot, the job's folder) is the submitter's, and everything inside the job is the runner's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from store.errors import InvalidArgumentError, NotInstalledError

if TYPE_CHECKING:
    from compute.model import JobSpec, Resources
    from compute.state import JobFolder, StatusRecord

#: name -> (dotted path of the executor class, extra that installs its dependencies)
EXECUTORS: dict[str, tuple[str, str | None]] = {
    "local": ("compute.backends.local:LocalExecutor", None),
    "ray": ("compute.backends.ray:RayExecutor", "ray"),
}


class Executor(Protocol):
    """What a compute backend offers the submitter."""

    name: str

    def check(self, resources: Resources) -> None:
        """Refuse resources this machine or cluster can never offer.

        Raises:
            ResourceError: more GPUs, CPUs or memory than there are (the message says both).
        """

    def launch(self, folder: JobFolder, spec: JobSpec) -> Any:
        """Start the job whose spec is in ``folder``; returns an in-process handle or None.

        Raises:
            ComputeError: the job could not be started.
        """


@runtime_checkable
class SendsEarly(Protocol):
    """An executor that starts a job before its bookkeeping is written, to overlap the two."""

    def send(
        self,
        folder: JobFolder,
        spec: JobSpec,
        inline: tuple[JobSpec, bytes | None],
        prepare: Callable[[StatusRecord], None],
    ) -> tuple[Any, Future[None]]:
        """Send the job (``inline``: its spec and pickled payload, which the job starts
        from, never waiting for their files), then have ``prepare`` called with the job's first
        status record, to write the job's folder, payload, status and, last, its spec, now or
        on this process's background writer (:mod:`compute.bookkeeping`). The job's code must
        not start before the spec file exists. When ``prepare`` raises, the job is withdrawn
        (its code never runs, nothing of it is left) and the error is raised, by ``send`` or
        from the returned future.

        Returns:
            What :meth:`Executor.launch` returns, and a future done once ``prepare`` returned.

        Raises:
            ComputeError: the job could not be started; what ``prepare`` raised.
        """


def load_executor(name: str, **options: Any) -> Executor:
    """The executor registered as ``name``.

    Raises:
        InvalidArgumentError: no executor of that name.
        NotInstalledError: its extra is not installed (the message names it).
    """
    if not isinstance(name, str) or name not in EXECUTORS:
        raise InvalidArgumentError(
            f"unknown compute backend {name!r}; choose one of {', '.join(sorted(EXECUTORS))}"
        )
    path, extra = EXECUTORS[name]
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NotInstalledError(
            f"the {name!r} compute backend needs {exc.name or 'a missing package'}; "
            f"install it with: pip install 'flowlake[{extra}]'"
        ) from None
    executor: Executor = getattr(module, attr)(**options)
    return executor
