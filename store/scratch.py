"""Transaction scratch branches: their names, who owns one, and when one is provably abandoned.

:meth:`store.Branch.transact` works on a scratch branch named
``<branch>-tx-<12 hex>-h<host>b<boot>p<pid>t<created>``: ``host`` tags the machine and process
id namespace, ``boot`` the machine's boot, ``pid`` the owning process and ``created`` the unix
second the branch was made. A process killed mid-transaction cannot delete its scratch branch;
the name alone then says, on every backend and without any record elsewhere, whether the owner
is provably gone (:func:`abandoned`), so :func:`reclaim` (``flowlake gc``) can delete it.

Scratch branches are not the user's: listings and the tracking views leave them out unless
asked (:meth:`store.Lake.branches` ``include_scratch``). Names of the older form
``<branch>-tx-<12 hex>`` (no owner) are scratch branches too; their owner cannot be known, so
they are never reclaimed automatically (delete one with ``lake.delete_branch``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from store import processes
from store.errors import BranchNotFoundError, PermissionDeniedError
from store.names import MAX_BRANCH

if TYPE_CHECKING:
    from store.lake import Lake

_SCRATCH = re.compile(
    r"^(?P<base>.+)-tx-(?P<id>[0-9a-f]{12})"
    r"(?:-h(?P<host>[0-9a-f]{8})b(?P<boot>[0-9a-f]{8})p(?P<pid>[0-9]{1,10})t(?P<created>[0-9]{1,12}))?$"
)
#: A process that started this many seconds after its scratch branch was made cannot be its
#: owner (the slack covers the rounding of both clocks).
START_SLACK_S = 2.0


#: Why :func:`kept_because` keeps a branch made less than the retention ago.
YOUNGER = "younger than the retention"


@dataclass(frozen=True)
class ScratchOwner:
    """The process that made a scratch branch.

    Attributes:
        host: 8 hex digits naming the host and its process id namespace.
        boot: 8 hex digits naming the host's boot.
        pid: the process id.
        created: when the branch was made, unix seconds.
    """

    host: str
    boot: str
    pid: int
    created: int


@dataclass(frozen=True)
class ScratchBranch:
    """A transaction's scratch branch as listed.

    Attributes:
        name: its full, namespace-qualified name.
        owner: the process that made it, or None for an older name without one.
    """

    name: str
    owner: ScratchOwner | None


def new_short_name(base_short: str) -> str:
    """A fresh scratch branch name (short, without namespace) for a transaction on branch
    ``base_short`` made by this process now; at most :data:`store.names.MAX_BRANCH` long."""
    host, boot = _this_machine()
    suffix = f"-tx-{uuid.uuid4().hex[:12]}-h{host}b{boot}p{os.getpid()}t{int(time.time())}"
    return base_short[: MAX_BRANCH - len(suffix)] + suffix


def parse(name: str) -> ScratchBranch | None:
    """The scratch branch ``name`` (full or short) stands for, or None when it is not one."""
    match = _SCRATCH.match(name.rpartition("/")[2])
    if match is None:
        return None
    if match["pid"] is None:
        return ScratchBranch(name, None)
    owner = ScratchOwner(match["host"], match["boot"], int(match["pid"]), int(match["created"]))
    return ScratchBranch(name, owner)


def is_scratch(name: str) -> bool:
    """Whether branch ``name`` (full or short) is a transaction's scratch branch."""
    # The substring test first: listings call this for every branch (10,000 at a time).
    return "-tx-" in name and parse(name) is not None


def abandoned(owner: ScratchOwner, grace: timedelta, now: float | None = None) -> bool:
    """Whether the transaction of ``owner`` is provably over and older than ``grace``.

    Provably over means: the owner ran on this host (same host and process id namespace) and
    either the host has rebooted since, or no process has its id, or the process with its id
    started after the branch was made (the id was reused). An owner on another host is never
    provably over: its branch is kept.
    """
    return kept_because(owner, grace, now) is None


def kept_because(
    owner: ScratchOwner | None, grace: timedelta, now: float | None = None
) -> str | None:
    """Why a scratch branch made by ``owner`` is kept (a phrase such as ``"younger than the
    retention"``), or None when its transaction is provably over and older than ``grace``
    (see :func:`abandoned`)."""
    if owner is None:
        return "no owner in its name (an older flowlake made it)"
    now = time.time() if now is None else now
    if now - owner.created < grace.total_seconds():
        return YOUNGER
    host, boot = _this_machine()
    if owner.host != host:
        return "made on another host"
    if owner.boot != boot:
        return None
    return "its process is alive" if _running_since(owner.pid, owner.created) else None


def reclaim(lake: Lake, grace: timedelta) -> list[ScratchBranch]:
    """Delete the scratch branches of every namespace whose transaction is provably over
    (:func:`abandoned`) and older than ``grace``.

    A branch this user may not delete, or that its owner deleted meanwhile, is left alone.

    Returns:
        The scratch branches deleted, sorted by name.
    """
    dropped: list[ScratchBranch] = []
    now = time.time()
    for info in lake.branches(all_namespaces=True, include_scratch=True):
        found = parse(info.name)
        if found is None or found.owner is None or not abandoned(found.owner, grace, now):
            continue
        try:
            lake.delete_branch(info.name)
        except (BranchNotFoundError, PermissionDeniedError):
            continue
        dropped.append(found)
    return sorted(dropped, key=lambda s: s.name)


@functools.cache
def _this_machine() -> tuple[str, str]:
    """(host tag, boot tag) of this process: see :class:`ScratchOwner`."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    host = f"{os.uname().nodename}\0{namespace}"
    return _tag(host), _tag(boot)


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _running_since(pid: int, created: float) -> bool:
    """Whether process ``pid`` is alive (not a zombie) and started no later than ``created``
    (when its start time cannot be read, alive is enough: the branch is then kept)."""
    if not processes.pid_alive(pid):
        return False
    started = processes.start_time(pid)
    return started is None or started <= created + START_SLACK_S
