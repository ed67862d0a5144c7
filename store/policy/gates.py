"""Evaluating the promotion gates of ``main``'s policy on exactly one source commit.

* ``check_run``: a tracking run tagged ``check = <name>`` finished (status ``finished``) on the
  source commit: its input commit, or the commit it merged its results into, is the source.
* ``metric``: the live deployment serving the source commit is compared with ``production``
  by ``tracking.compare``; the condition is checked on the two means, and ``require`` also
  asks for that comparison's verdict (``better``; or ``not worse``: anything but ``worse``),
  with the direction the condition's operator gives (``>``/``>=``: higher is better,
  ``<``/``<=``: lower), whatever the metric's name suggests.
  ``production`` is the model it serves now, measured since its promotion (the window
  ``compare`` uses); fewer points than ``compare``'s minimum on either side fails the gate
  closed, naming the side, never falling back to an earlier model's numbers.
* ``approvals``: distinct principals allowed by ``approvers``, other than the source commit's
  author, recorded an approval of the source commit in the audit log (``flowlake approve``).

Tracking is above the store, so its functions are looked up by dotted path when a gate needs
them (STYLE rule 4): importing the store never imports tracking.
"""

from __future__ import annotations

import importlib
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from store.backend import Backend
from store.errors import InvalidArgumentError, StoreError
from store.policy.ledger import Ledger
from store.policy.model import Gate, GateKind, Policy

if TYPE_CHECKING:
    from store.policy.enforce import Identity

#: Tracking functions the gates use, by dotted path.
TRACKING = {
    "sql": "tracking.query:sql",
    "deployments": "tracking.deployment_registry:deployments",
    "compare": "tracking.deployment_compare:compare",
    "shortfall": "tracking.deployment_compare:shortfall",
}
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class GateOutcome:
    """One gate's result on one commit.

    Attributes:
        gate: the gate.
        passed: whether it holds.
        detail: why, with the numbers (``candidate 0.91 < 0.928 = production 0.93 - 0.002``).
    """

    gate: Gate
    passed: bool
    detail: str

    def summary(self) -> str:
        """``<kind> <name>: passed|failed (<detail>)``, for messages and the audit log."""
        state = "passed" if self.passed else "FAILED"
        return f"{self.gate.kind.value} {self.gate.name!r}: {state} ({self.detail})"


def _tracking(name: str) -> Callable[..., Any]:
    module, _, attribute = TRACKING[name].partition(":")
    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]


def evaluate(
    policy: Policy,
    backend: Backend,
    ledger: Ledger,
    source_commit: str,
    identity: Identity,
    location: str = "",
) -> list[GateOutcome]:
    """Every gate of ``policy`` on ``source_commit``, in the policy's order.

    Args:
        backend: the lake's backend itself (gates read tracking data whatever the perimeter).
        location: the lake's location, for tracking's local caches.
    """
    if not policy.gates:
        return []
    from store.lake import Lake
    from store.names import Namespace

    lake = Lake(backend, Namespace("production"), "flowlake", location)
    out = []
    for gate in policy.gates:
        try:
            if gate.kind is GateKind.CHECK_RUN:
                out.append(_check_run(lake, gate, source_commit))
            elif gate.kind is GateKind.METRIC:
                out.append(_metric(lake, gate, source_commit))
            else:
                out.append(_approvals(policy, backend, ledger, gate, source_commit))
        except (StoreError, ValueError, RuntimeError) as exc:
            out.append(GateOutcome(gate, False, f"could not be evaluated: {exc}"))
    return out


def _check_run(lake: Any, gate: Gate, commit: str) -> GateOutcome:
    table = _tracking("sql")(
        lake,
        "SELECT r.run_id, r.status FROM runs r JOIN tags t ON t.run_id = r.run_id "
        "WHERE t.key = 'check' AND t.value = ? AND (r.input_commit = ? OR r.output_commit = ?)",
        params=[gate.name, commit, commit],
    )
    rows = table.to_pylist()
    good = [r["run_id"] for r in rows if r["status"] == "finished"]
    if good:
        return GateOutcome(gate, True, f"run {good[0]} finished on {commit[:12]}")
    if rows:
        states = ", ".join(f"{r['run_id']} {r['status']}" for r in rows)
        return GateOutcome(gate, False, f"no finished check run on {commit[:12]} ({states})")
    return GateOutcome(gate, False, f"no run tagged check={gate.name!r} on {commit[:12]}")


def _metric(lake: Any, gate: Gate, commit: str) -> GateOutcome:
    serving = [
        r
        for r in _tracking("deployments")(lake, include_retired=False)
        if r.commit == commit and not r.is_production and r.status == "live"
    ]
    if not serving:
        return GateOutcome(gate, False, f"no live deployment serves {commit[:12]}")
    record = serving[0]
    wanted = [gate.metric] + ([gate.baseline_metric] if gate.baseline_metric else [])
    # Every metric, so that one the deployments never logged is named as unknown rather
    # than compared on no data.
    # The condition says which way is better for its metric (``>=``: higher), so a verdict is
    # given for a metric whose name says neither ("nps"), instead of "changed" for ever.
    direction = {">": "higher", ">=": "higher", "<": "lower", "<=": "lower"}.get(gate.op)
    comparison = _tracking("compare")(
        lake, record.name, directions={gate.metric: direction} if direction else None
    )
    rows = {row.metric: row for row in comparison.metrics}
    for name in wanted:
        if name not in rows:
            known = ", ".join(sorted(rows)) or "none"
            raise InvalidArgumentError(
                f"metric {name!r} is unknown for deployment {record.name!r} (known: {known})"
            )
    # The candidate's side of its metric, and production's side of the metric it is held to.
    needed = [(rows[gate.metric], rows[gate.metric].n_candidate)]
    if gate.baseline_metric is not None:
        needed.append((rows[gate.baseline_metric], rows[gate.baseline_metric].n_baseline))
    if gate.require is not None:  # a verdict needs both sides
        needed.append((rows[gate.metric], rows[gate.metric].n_baseline))
    for row, count in needed:
        if count < comparison.min_points:
            why = _tracking("shortfall")(comparison, row)
            return GateOutcome(gate, False, f"{row.metric}: {why}")
    candidate = rows[gate.metric].candidate
    if gate.baseline_metric is not None:
        base = rows[gate.baseline_metric].baseline
        bound = base + gate.offset
        sign = "+" if gate.offset >= 0 else "-"
        right = f"{bound:.6g} = production {base:.6g} {sign} {abs(gate.offset):g}"
    else:
        bound = gate.offset
        right = f"{bound:.6g}"
    if math.isnan(candidate) or math.isnan(bound):
        return GateOutcome(gate, False, f"not enough data on {record.name!r}")
    holds = OPERATORS[gate.op](candidate, bound)
    detail = f"{record.name} {gate.metric} {candidate:.6g} {gate.op if holds else 'vs'} {right}"
    if holds and gate.require is not None:
        verdict = rows[gate.metric].verdict
        ok = verdict == "better" if gate.require == "better" else verdict != "worse"
        detail += f"; verdict {verdict!r}, required {gate.require!r}"
        holds = ok
    return GateOutcome(gate, holds, detail)


def author(backend: Backend, commit: str) -> str:
    """The principal that made ``commit``: its recorded principal, else ``user:<committer>``."""
    from store.policy.enforce import META_PRINCIPAL

    found = backend.get_commit(commit)
    return found.metadata.get(META_PRINCIPAL) or f"user:{found.committer}"


def _approvals(
    policy: Policy, backend: Backend, ledger: Ledger, gate: Gate, commit: str
) -> GateOutcome:
    made_by = author(backend, commit)
    approvers = sorted(
        {
            e.actor
            for e in ledger.entries()
            if e.action == "approve"
            and e.details.get("commit") == commit
            and e.actor != made_by
            and policy.allows(gate.approvers, e.actor)
        }
    )
    detail = f"{len(approvers)} of {gate.count} from {list(gate.approvers)}, author {made_by}"
    if approvers:
        detail += f": {', '.join(approvers)}"
    return GateOutcome(gate, len(approvers) >= gate.count, detail)
