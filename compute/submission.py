"""The submitting side: check a job, pin its input, snapshot its code, hand it to a backend.

Everything that can be wrong with a submission (backend, resources, input ref, arguments,
command) is checked before anything is created: a refused job leaves no branch, folder or run.
A backend that can (Ray) is sent the job, with its spec and payload in the task's arguments,
as soon as nothing can refuse it any more; the job's bookkeeping (its folder, payload, status
and, last, its spec) is then written by this process's background writer
(:mod:`compute.bookkeeping`) while ``submit`` returns and the backend starts the job. The job's
code waits for the spec file before it runs, and a failure in between withdraws the job, leaves
nothing of it, and is raised by the next call on the job (see
:class:`compute.backends.SendsEarly`). The job's output
branch, when new, is checked here and created by the job's attempt when it first opens the lake.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.backends import SendsEarly, load_executor
from compute.code import PendingSnapshot, pickle_payload
from compute.job import Job
from compute.model import PYTHON_NAMES, Environment, JobSpec, JobStatus, Resources
from compute.state import LAKEFS_SCHEME, JobFolder, JobStore, StatusRecord, write_atomic
from store.errors import BranchNotFoundError, InvalidArgumentError, UnsupportedOperationError
from store.lake import Lake
from store.names import BranchName, check_new_branch_name, parse_branch
from store.refs import refuse_branch_clashes

#: A command job without a name is named after its command line, cut to this many characters.
DEFAULT_NAME_LENGTH = 80


def submit(
    fn: Callable[..., Any] | None = None,
    args: dict[str, Any] | None = None,
    *,
    lake: Lake,
    command: Sequence[str] | None = None,
    input_ref: str = "main",
    output_branch: str | None = None,
    resources: Resources | None = None,
    environment: Environment | None = None,
    backend: str = "local",
    retries: int = 0,
    timeout: float | None = None,
    name: str | None = None,
    code_dir: str | os.PathLike[str] | None = None,
    address: str | None = None,
) -> Job:
    """Launch ``fn(**args)`` (or ``command``) as a job on ``backend``.

    The job reads the commit ``input_ref`` resolves to now, however the ref moves later. It
    writes on its own run branch; when it succeeds its outputs and run record are merged into
    ``output_branch`` in one merge, and when it fails, times out, is cancelled or killed,
    ``output_branch`` is unchanged and the run branch keeps its partial outputs, log and error.

    Args:
        fn: a picklable callable (functions of ``__main__`` and of modules outside the project
            are shipped by value); give ``fn`` or ``command``.
        args: keyword arguments for ``fn``.
        lake: the lake; the job works in its namespace.
        command: an argv run in a checkout of the code snapshot (``python x.py`` runs ``x.py``
            with the job's interpreter).
        input_ref: a branch, tag or commit; resolved to a commit id now.
        output_branch: where a successful job's outputs are merged; created from the input
            commit when absent (default ``job-<job id prefix>``), by the job's attempt when it
            first opens the lake (checked here: a name it could not create is refused now).
        resources: GPUs, CPUs, memory (default one CPU).
        environment: packages to run with (default: the submitter's interpreter as it is).
        backend: ``local`` or ``ray``.
        retries: how many times a failed attempt is tried again (not cancelled or killed ones).
        timeout: seconds an attempt may run before it is stopped and fails.
        name: a human-readable name, also the name of the job's tracking runs (default: the
            callable's ``__name__``, or the command line cut to 80 characters).
        code_dir: the project folder to snapshot (default: the git work tree around the
            current folder, else the current folder).
        address: the Ray cluster (default ``RAY_ADDRESS``, else a local Ray).

    Raises:
        InvalidArgumentError: an unknown backend, both or neither of ``fn`` and ``command``,
            an argument that cannot be pickled, a command that is not found, bad retries or
            timeout.
        ResourceError: negative resources, or more than the machine or cluster has.
        RefNotFoundError: ``input_ref`` does not exist.
        InvalidNameError: a malformed ``output_branch``.
        AmbiguousNameError: a new ``output_branch`` named like a tag, or like a branch of
            production or another namespace.
        PermissionDeniedError: the lake's policy forbids creating or writing ``output_branch``.
        NotInstalledError: the backend's extra is missing, or (local backend) ``environment``
            names packages and uv is not installed.
        PolicyLimitError: the job asks for more than the lake's perimeter allows (GPUs, CPUs,
            memory, a package index or image registry), see docs/policy.md.
        UnsupportedOperationError: the environment names a container image.
        TokenError: the lake acts as a machine token that ``FLOWLAKE_TOKEN`` does not hold
            (a job gets its token only from the environment, never from a file).
    """
    return _launch(
        _checked(
            fn,
            args,
            lake=lake,
            command=command,
            input_ref=input_ref,
            output_branch=output_branch,
            resources=resources,
            environment=environment,
            backend=backend,
            retries=retries,
            timeout=timeout,
            name=name,
            code_dir=code_dir,
            address=address,
        )
    )


def map(  # noqa: A001 - a sweep is a map, as in Ray and concurrent.futures
    fn: Callable[..., Any],
    args_list: Iterable[dict[str, Any]],
    *,
    lake: Lake,
    name: str | None = None,
    **options: Any,
) -> list[Job]:
    """Submit ``fn(**args)`` once per item of ``args_list`` (a sweep); same options as
    :func:`submit`. The input ref is resolved once, so every job of the sweep reads the same
    commit even if the ref moves meanwhile, and every item is checked (arguments pickled,
    resources, output branch) before the first job is launched: a refused sweep launches none.

    Raises:
        As :func:`submit`.
    """
    if isinstance(args_list, dict | str | bytes) or not isinstance(args_list, Iterable):
        raise InvalidArgumentError(
            f"map takes an iterable of argument dicts (one per job), not {args_list!r:.80}"
        )
    items = list(args_list)
    if not items:
        raise InvalidArgumentError("map needs at least one set of arguments")
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise InvalidArgumentError(
                f"item {number} of the sweep: each item is a dict of arguments, not {item!r}"
            )
    defaults = _submit_defaults()
    unknown = set(options) - set(defaults)
    if unknown:
        raise InvalidArgumentError(f"map got unknown options: {', '.join(sorted(unknown))}")
    settings = {**defaults, **options}
    pinned = lake.resolve(settings["input_ref"])  # one commit for the whole sweep
    checked = [
        _checked(
            fn,
            item,
            lake=lake,
            # Named after its arguments (none: after the callable, as submit names a job).
            name=name
            or ",".join(f"{k}={v}" for k, v in item.items())[:DEFAULT_NAME_LENGTH]
            or None,
            pinned=pinned,
            item=f"item {number} of the sweep",
            **settings,
        )
        for number, item in enumerate(items, 1)
    ]
    return [_launch(job) for job in checked]


def _submit_defaults() -> dict[str, Any]:
    """:func:`submit`'s keyword options and their defaults, which :func:`map` takes too (but
    ``lake`` and ``name``, which it takes itself)."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(submit).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("lake", "name")
    }


@dataclass(frozen=True)
class _Checked:
    """A job that passed every check of :func:`submit`: nothing of it exists yet."""

    spec: JobSpec
    payload: bytes | None
    executor: Any
    jobs: JobStore


def _checked(
    fn: Callable[..., Any] | None,
    args: dict[str, Any] | None,
    *,
    lake: Lake,
    command: Sequence[str] | None,
    input_ref: str,
    output_branch: str | None,
    resources: Resources | None,
    environment: Environment | None,
    backend: str,
    retries: int,
    timeout: float | None,
    name: str | None,
    code_dir: str | os.PathLike[str] | None,
    address: str | None,
    pinned: str | None = None,
    item: str | None = None,
) -> _Checked:
    """:func:`submit`'s checks, its input commit (``pinned``, else ``input_ref`` resolved),
    code snapshot, payload and spec; raises as :func:`submit` does, having created nothing.
    ``item`` names ``args`` among a sweep's (``"item 2 of the sweep"``) in errors about them."""
    location = _location(lake)  # refuses what is not a lake
    argv = _check_arguments(fn, args, command, retries, timeout, name, item)
    if output_branch is not None and (not isinstance(output_branch, str) or not output_branch):
        raise InvalidArgumentError(f"output_branch must be a branch name, not {output_branch!r}")
    resources = resources if resources is not None else Resources()
    environment = environment if environment is not None else Environment()
    if not isinstance(resources, Resources) or not isinstance(environment, Environment):
        raise InvalidArgumentError("resources and environment take compute.Resources / Environment")
    _check_code_dir(code_dir)
    # The snapshot's git commands, when it needs any, run while the job is checked.
    pending = PendingSnapshot(code_dir)
    try:
        from store.policy.enforce import job_identity
        from store.policy.limits import check_job  # the perimeter's limits, docs/policy.md

        check_job(lake, resources, environment)
        identity = job_identity(lake.backend)
        if environment.image is not None:
            raise UnsupportedOperationError(
                f"no compute backend runs container images yet (image {environment.image!r})"
            )
        options = {"address": address} if backend == "ray" else {}
        if address is not None and backend != "ray":
            raise InvalidArgumentError("address= is for the ray backend")
        executor = load_executor(backend, **options)
        executor.check(resources)
        if not environment.is_default and backend == "local":
            from compute.envs import uv_binary

            uv_binary()  # a missing uv is refused here, before anything is created
        input_commit = lake.resolve(input_ref) if pinned is None else pinned
        job_id = uuid.uuid4().hex
        target = output_branch if output_branch is not None else f"job-{job_id[:12]}"
        parsed = parse_branch(target, _namespace(lake))
        jobs = JobStore.for_location(location)
        sid, checkout = pending.finish(jobs.code_root)
    except BaseException:
        pending.close()
        raise
    root, real_root = _snapshot_root(checkout)
    workdir = _workdir(real_root, checkout)
    if argv is not None:
        _check_found(argv, checkout / workdir, Path(root) / workdir)
    payload = _payload(fn, args, root, item)
    # A default name is a fresh job id's, which no branch or tag has (48 random bits): only a
    # name the user gave is looked up and checked for clashes (the attempt's creating the
    # branch would still refuse one, failing the job).
    existing = _existing_branch(lake, target) if output_branch is not None else None
    if existing is None:
        _check_new_branch(lake, parsed, clashes=output_branch is not None)
    spec = JobSpec(
        job_id=job_id,
        name=name or _default_name(fn, argv),
        backend=backend,
        lake_location=location,
        namespace=lake.namespace,
        user=lake.user,
        input_ref=input_ref,
        input_commit=input_commit,
        output_branch=existing or str(parsed),
        kind="command" if argv is not None else "callable",
        command=argv or (),
        code_snapshot=sid,
        resources=resources,
        environment=environment,
        retries=int(retries),
        timeout=float(timeout) if timeout is not None else None,
        submitted_at=time.time(),
        submitter_python=sys.executable,
        perimeter=identity.perimeter if identity is not None else None,
        principal=identity.principal if identity is not None else None,
        workdir=workdir,
    )
    return _Checked(spec, payload, executor, jobs)


def _check_arguments(
    fn: Callable[..., Any] | None,
    args: dict[str, Any] | None,
    command: Sequence[str] | None,
    retries: int,
    timeout: float | None,
    name: str | None,
    item: str | None,
) -> tuple[str, ...] | None:
    """Check what :func:`submit` is given besides the lake, resources and environment;
    returns the command's argv, if any.

    Raises:
        InvalidArgumentError: as :func:`submit`.
    """
    if (fn is None) == (command is None):
        raise InvalidArgumentError("give a callable or command=[...], not both and not neither")
    if fn is not None and not callable(fn):
        raise InvalidArgumentError(f"{fn!r} is not callable")
    if args is not None and (
        not isinstance(args, dict) or not all(isinstance(k, str) for k in args)
    ):
        raise InvalidArgumentError(
            f"{item}: args must be a dict of keyword arguments"
            if item
            else "args must be a dict of keyword arguments"
        )
    if fn is not None:
        _check_binds(fn, args or {}, item)
    argv = _check_command(command)
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
        raise InvalidArgumentError(f"retries must be a whole number >= 0, got {retries!r}")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, numbers.Real)
        or not math.isfinite(timeout)
        or not timeout > 0
    ):
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if name is not None and (
        not isinstance(name, str) or not name.strip() or any(c < " " for c in name)
    ):
        raise InvalidArgumentError(
            f"name must be a non-empty string without control characters, got {name!r}"
        )
    return argv


def _check_binds(fn: Callable[..., Any], args: dict[str, Any], item: str | None) -> None:
    """Raises InvalidArgumentError when ``fn(**args)`` could not be called as given (a missing
    or unknown argument): said now, not by the job's failure. A callable whose signature
    Python cannot tell (some built-ins) is not checked."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**args)
    except TypeError as exc:
        name = getattr(fn, "__name__", None) or type(fn).__name__
        signature = signature.replace(return_annotation=inspect.Signature.empty)
        where = f"{item}: " if item else ""
        raise InvalidArgumentError(
            f"{where}{name}{signature} cannot take {args!r:.200}: {exc}"
        ) from None


def _check_code_dir(code_dir: str | os.PathLike[str] | None) -> None:
    """Raises InvalidArgumentError when ``code_dir`` is given and is not a folder."""
    if code_dir is None:
        return
    try:
        path = os.fspath(code_dir)
    except TypeError:
        raise InvalidArgumentError(f"code_dir must be a folder's path, not {code_dir!r}") from None
    if not os.path.isdir(path):
        what = "is not a folder" if os.path.exists(path) else "does not exist"
        raise InvalidArgumentError(f"code_dir {path} {what}")


def _payload(
    fn: Callable[..., Any] | None, args: dict[str, Any] | None, root: str, item: str | None
) -> bytes | None:
    """``fn`` and ``args`` pickled for a job whose code snapshot has root ``root`` (None for
    a command); an error names the sweep's ``item``.

    Raises:
        InvalidArgumentError: ``fn`` or an argument cannot be pickled.
    """
    if fn is None:
        return None
    try:
        return pickle_payload(fn, args or {}, root)
    except InvalidArgumentError as exc:
        if item is None:
            raise
        raise InvalidArgumentError(f"{item}: {exc}") from None


def _launch(checked: _Checked) -> Job:
    """Create a checked job's bookkeeping and hand it to its backend."""
    spec, payload, executor, jobs = checked.spec, checked.payload, checked.executor, checked.jobs
    job_id = spec.job_id
    folder = JobFolder(jobs.root / "jobs" / job_id)  # made by prepare (or a Ray attempt)

    def prepare(record: StatusRecord) -> None:
        """The job's bookkeeping: its folder, payload, status and log, then its spec
        (atomically, last: a folder without one is not a job yet, and a Ray attempt sent early
        runs no user code before it exists). The output branch is the attempt's to create
        (:func:`compute.runner.ensure_output_branch`)."""
        jobs.new_folder(job_id)
        if payload is not None:
            folder.payload_file.write_bytes(payload)
        folder.write_status(record, first=True)
        folder.log_file.touch()
        write_atomic(folder.spec_file, spec.to_json().encode())

    written = None
    try:
        if isinstance(executor, SendsEarly):
            handle, written = executor.send(folder, spec, (spec, payload), prepare)
        else:
            prepare(StatusRecord(JobStatus.QUEUED.value))
            handle = executor.launch(folder, spec)
    except BaseException as exc:
        if folder.spec_file.is_file():  # the job exists: it says why it never started
            folder.write_status(
                StatusRecord(JobStatus.FAILED.value, error=f"could not start the job: {exc}")
            )
        else:  # refused (or failed) before it existed: nothing is left of it
            shutil.rmtree(folder.path, ignore_errors=True)
        raise
    return Job(folder, handle, written)


def _location(lake: Lake) -> str:
    """The lake's location as jobs record it.

    Raises:
        InvalidArgumentError: ``lake`` is not a Lake (a path, say: open it with store.open).
    """
    if not isinstance(lake, Lake):
        raise InvalidArgumentError(
            f"lake must be a store.Lake (open one with store.open), not {lake!r}"
        )
    location = lake.location
    return location if location.startswith(LAKEFS_SCHEME) else os.path.abspath(location)


def _namespace(lake: Lake) -> Any:
    from store.names import Namespace

    return Namespace.parse(lake.namespace)


def _existing_branch(lake: Lake, name: str) -> str | None:
    """The full name of the existing branch ``name`` refers to, or None when there is none."""
    try:
        return lake.get_branch(name).name
    except BranchNotFoundError:
        return None


def _check_new_branch(lake: Lake, name: BranchName, *, clashes: bool = True) -> None:
    """Refuse now, reading only, what creating the output branch ``name`` would refuse later
    (the job's attempt creates it when it first opens the lake): a malformed name, one a tag,
    production or another namespace answers to (unless not ``clashes``), one the lake's policy
    forbids writing.

    Raises:
        InvalidNameError, AmbiguousNameError, PermissionDeniedError, ScopeError.
    """
    check_new_branch_name(name.short)
    if clashes:
        refuse_branch_clashes(lake.backend, name)
    check_write = getattr(lake.backend, "check_write", None)  # a lake under a policy
    if check_write is not None:
        check_write(name.backend_name(), "create branch")


#: The project root of each checkout seen, and its real path (a snapshot's manifest never
#: changes once written).
_roots: dict[Path, tuple[str, str]] = {}


def _snapshot_root(checkout: Path) -> tuple[str, str]:
    """The project root the checkout was snapshotted from, and its real path."""
    known = _roots.get(checkout)
    if known is None:
        import json

        root = str(json.loads((checkout.parent / "manifest.json").read_text())["root"])
        known = (root, os.path.realpath(root))
        if len(_roots) >= 64:
            _roots.clear()
        _roots[checkout] = known
    return known


def _workdir(real_root: str, checkout: Path) -> str:
    """The submitter's folder relative to the snapshot's root (given by its real path; "" when
    it is the root or lies outside it), made in the checkout when the snapshot has no file
    there."""
    here = os.getcwd()  # the kernel's answer: a real path already
    rel = os.path.relpath(here, real_root)
    if rel == "." or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return ""
    (checkout / rel).mkdir(parents=True, exist_ok=True)
    return rel.replace(os.sep, "/")


def _default_name(fn: Callable[..., Any] | None, argv: tuple[str, ...] | None) -> str:
    """A job's name when none is given: what people would call it in a listing."""
    if argv is not None:
        return " ".join(argv)[:DEFAULT_NAME_LENGTH]
    inner = getattr(fn, "func", fn)  # functools.partial and the like wrap the function
    return str(getattr(inner, "__name__", None) or type(fn).__name__)


def _check_command(command: Sequence[str] | None) -> tuple[str, ...] | None:
    if command is None:
        return None
    if isinstance(command, str) or not all(isinstance(a, str) for a in command) or not command:
        raise InvalidArgumentError("command must be a non-empty list of strings (an argv)")
    if not command[0].strip():
        raise InvalidArgumentError(f"command {list(command)!r} names no program to run")
    return tuple(command)


def _check_found(argv: tuple[str, ...], start: Path, origin: Path) -> None:
    """Raises InvalidArgumentError when the program (or the Python script) is not found from
    ``start``, the folder of the checkout the job starts in (``origin``: the project's folder
    it is a copy of)."""
    program = argv[0]
    if program in PYTHON_NAMES:
        if len(argv) >= 2 and not argv[1].startswith("-"):
            script = argv[1]
            absolute = Path(script).is_absolute() and Path(script).is_file()
            if not (start / script).is_file() and not absolute:
                if not (origin / script).is_file():
                    raise InvalidArgumentError(f"command not found: no file {script} in {origin}")
                raise InvalidArgumentError(
                    f"command not found: {script} is not in the code snapshot ({start}): the "
                    "snapshot keeps source files git does not ignore (see docs/compute.md)"
                )
        return
    local = start / program
    if shutil.which(program) is not None or (local.is_file() and os.access(local, os.X_OK)):
        return
    if local.is_file():
        raise InvalidArgumentError(
            f"command {program} is not executable (chmod +x it, or run it with python {program})"
        )
    raise InvalidArgumentError(f"command not found: {program}")
