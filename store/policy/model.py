"""The policy as values: perimeters, who may do what in them, and the gates of a promotion.

A :class:`Policy` is parsed once from ``_flowlake/policy.toml`` on ``main`` (see
:mod:`store.policy.parse`) and never changes afterwards; every check reads these frozen values.

Principals are spelled ``user:<login>``, ``group:<name>`` or ``token:<name>`` (a machine token);
``*`` matches every principal. Patterns over branches and paths are globs where ``*`` matches
within one ``/``-separated segment and ``**`` matches any number of segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache

#: Where the policy lives, on the protected branch ``main``.
POLICY_PATH = "_flowlake/policy.toml"


class GateKind(StrEnum):
    """What a promotion gate checks."""

    CHECK_RUN = "check_run"  # a tracking run tagged as the check succeeded on the source commit
    METRIC = "metric"  # a condition on metrics against production's deployment
    APPROVALS = "approvals"  # approvals recorded by allowed principals, not the author


@dataclass(frozen=True)
class Gate:
    """One condition a promotion into ``main`` must meet.

    Attributes:
        kind: what is checked.
        name: the check run's name (``check_run``), else a label for messages.
        condition: ``metric`` gates: the condition as written,
            ``<metric> <op> production.<metric> [+|- <number>]`` or ``<metric> <op> <number>``,
            with ``op`` one of ``>= > <= < ==``.
        metric: ``metric`` gates: the candidate's metric on the left.
        op: ``metric`` gates: the comparison.
        baseline_metric: ``metric`` gates: production's metric on the right, or None when the
            right side is a constant.
        offset: ``metric`` gates: the constant, or the number added to production's metric.
        require: ``metric`` gates: also require ``tracking.compare``'s verdict on the metric to
            be ``"better"`` (significantly better than production) or ``"not worse"`` (not
            significantly worse); None checks the condition on the means alone.
        count: ``approvals`` gates: how many distinct approvers are needed.
        approvers: ``approvals`` gates: principals whose approval counts.
        line: the policy line that defined the gate, for messages.
    """

    kind: GateKind
    name: str
    condition: str = ""
    metric: str = ""
    op: str = ""
    baseline_metric: str | None = None
    offset: float = 0.0
    require: str | None = None
    count: int = 0
    approvers: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Perimeter:
    """An isolation boundary: who may act in it, what they may write and read, what jobs get.

    Attributes:
        name: ``staging``, ``production``, ...
        principals: who may open the lake in this perimeter.
        write: branch patterns (``<namespace>/<branch>``) its principals may write or merge into;
            ``{user}`` stands for the acting person's login (:func:`expand_principal`).
        read_deny: path patterns that may not be read from this perimeter.
        max_gpus: the most GPUs one job of this perimeter may ask for (None: no limit).
        max_cpus: the most CPU cores one job may ask for (None: no limit).
        max_memory_gib: the most memory one job may reserve, in GiB (None: no limit).
        package_indexes: package index URLs jobs may install from; an index matches an entry
            equal to it or a prefix of it at a ``/`` (empty: any index).
        image_registries: container registries (``host[:port]``, optionally with a path
            prefix such as ``ghcr.io/acme``) jobs' images may come from (empty: any).
        line: the policy line of its table.
        key_lines: the policy line of each key the table sets (see :meth:`line_of`).
    """

    name: str
    principals: tuple[str, ...]
    write: tuple[str, ...] = ()
    read_deny: tuple[str, ...] = ()
    max_gpus: int | None = None
    max_cpus: float | None = None
    max_memory_gib: float | None = None
    package_indexes: tuple[str, ...] = ()
    image_registries: tuple[str, ...] = ()
    line: int = 0
    key_lines: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    def line_of(self, key: str) -> int:
        """The policy line that sets ``key`` (``write``, ``max_cpus``, ...), else the table's."""
        return next((line for name, line in self.key_lines if name == key and line), self.line)


@dataclass(frozen=True)
class Policy:
    """A lake's whole policy. ``groups`` maps a group name to its members (principals)."""

    perimeters: dict[str, Perimeter]
    gates: tuple[Gate, ...] = ()
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def members(self, principal_or_group: str) -> frozenset[str]:
        """Principals a policy entry stands for (``group:x`` expands to its members)."""
        if principal_or_group.startswith("group:"):
            return frozenset(self.groups.get(principal_or_group.removeprefix("group:"), ()))
        return frozenset({principal_or_group})

    def allows(self, entries: tuple[str, ...], principal: str) -> bool:
        """Whether ``principal`` is one of ``entries`` (directly, through a group, or ``*``)."""
        return any(e == "*" or principal in self.members(e) for e in entries)


#: In a ``write`` pattern, stands for the acting person's login: ``user:{user}/**`` lets
#: ``user:alice`` write ``user:alice/...`` only. A machine token has no login, so a pattern
#: holding it matches nothing for ``token:`` principals.
USER_PLACEHOLDER = "{user}"


def expand_principal(pattern: str, principal: str) -> str | None:
    """``pattern`` with :data:`USER_PLACEHOLDER` replaced by ``principal``'s login, or None when
    the pattern holds it and ``principal`` is not a ``user:`` (it then matches nothing).

    Logins hold no glob characters (see :data:`store.policy.parse.PRINCIPAL`), so the result
    matches exactly that login.
    """
    if USER_PLACEHOLDER not in pattern:
        return pattern
    if not principal.startswith("user:"):
        return None
    return pattern.replace(USER_PLACEHOLDER, principal.removeprefix("user:"))


def glob_matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern`` (``*``: within a segment; ``**``: any segments)."""
    return _compiled(pattern).fullmatch(name) is not None


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in re.split(r"(\*\*/?|\*)", pattern):
        if token in ("**", "**/"):
            parts.append(".*")
        elif token == "*":
            parts.append("[^/]*")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts), re.DOTALL)
