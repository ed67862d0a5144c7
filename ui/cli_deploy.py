"""``flowlake deploy / deployments / compare / promote / undeploy / ui``: deployments in the CLI.

The main CLI registers them all with :func:`register`. Tables fit an 80-column terminal: short
commit ids, names cut with an ellipsis, times on one line.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

import store
import tracking
from store.errors import GateFailedError
from tracking.deployment_compare import Comparison, Gate, MetricComparison
from ui import render
from ui.options import DEFAULT_LAKE, JsonOption, LakeOption, NamespaceOption, open_lake

#: Verdict colours, shared with the dashboard.
VERDICT_STYLE = {
    "better": "green",
    "worse": "red",
    "changed": "yellow",
    "not significant": "",
    "not enough data": "dim",
}
APP_PATH = Path(__file__).with_name("app.py")

BaselineOption = Annotated[
    str, typer.Option("--baseline", help="Deployment to compare against.", show_default=True)
]


SplitOption = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="Expected traffic split BASELINE:CANDIDATE for the sample-ratio check, e.g. 95:5 "
        "for a 5% canary. Default: equal.",
        show_default=False,
    ),
]


def expected_split(value: str | None) -> tuple[float, float] | None:
    """``--split B:C`` as two positive shares, or None.

    Raises:
        typer.BadParameter: not two finite positive numbers separated by ':'.
    """
    if value is None:
        return None
    parts = value.split(":")
    try:
        shares = tuple(float(p) for p in parts)
    except ValueError:
        shares = ()
    if len(shares) != 2 or not all(math.isfinite(x) and x > 0 for x in shares):
        raise typer.BadParameter(
            f"expected BASELINE:CANDIDATE, two positive numbers such as 95:5, got {value!r}",
            param_hint="--split",
        )
    return shares[0], shares[1]


def register(app: typer.Typer) -> None:
    """Add the deployment commands and ``ui`` to ``app``."""
    app.command("deploy")(deploy_command)
    app.command("deployments")(deployments_command)
    app.command("compare")(compare_command)
    app.command("promote")(promote_command)
    app.command("undeploy")(undeploy_command)
    app.command("ui")(ui_command)


def deploy_command(
    name: Annotated[str, typer.Argument(help="A new deployment name.")],
    branch: Annotated[str, typer.Option("--branch", "-b", help="Branch to deploy (its head).")],
    model: Annotated[str | None, typer.Option("--model", help="Model path at that commit.")] = None,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deploy a branch's current head next to production."""
    dep = tracking.deploy(open_lake(lake, namespace), name, branch=branch, model=model)
    if as_json:
        render.emit_json(_record_json(dep.record))
        return
    render.stdout().print(
        Text.assemble(
            ("deployed ", "green"),
            (name, "bold"),
            f": {dep.branch} @ {render.short(dep.commit)}",
            f" (model {dep.model})" if dep.model else "",
        )
    )


def deployments_command(
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List deployments: production first, then the newest."""
    records = tracking.deployments(open_lake(lake, namespace))
    if as_json:
        render.emit_json([_record_json(r) for r in records])
        return
    table = Table(
        title="deployments",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    # Names and branches give way first (cut with an ellipsis, wrappable so the table can narrow
    # them); ids, statuses and times are never split.
    table.add_column("name", overflow="ellipsis", min_width=10, max_width=25)
    table.add_column("branch", overflow="ellipsis", min_width=10, max_width=24)
    render.unbroken_column(table, "commit", min_width=12)
    render.unbroken_column(table, "status", min_width=8)
    render.unbroken_column(table, "deployed", min_width=16)
    for r in records:
        style = {"live": "green", "promoted": "cyan", "retired": "dim"}.get(r.status, "")
        table.add_row(
            r.name,
            r.branch,
            render.short(r.commit),
            Text(r.status, style),
            _when(r.deployed_at) if r.deployed_at else "always",
        )
    render.stdout().print(table)


def compare_command(
    name: Annotated[str, typer.Argument(help="The candidate deployment.")],
    baseline: BaselineOption = "production",
    fixed: Annotated[
        bool, typer.Option("--fixed", help="Fixed-horizon intervals instead of sequential.")
    ] = False,
    split: SplitOption = None,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare a deployment with production (or --baseline) over the time both were live."""
    ratio = expected_split(split)
    result = tracking.compare(
        open_lake(lake, namespace),
        name,
        baseline,
        mode="fixed" if fixed else "sequential",
        expected_ratio=ratio,
    )
    if as_json:
        render.emit_json(result.to_dict())
        return
    print_comparison(result)


def print_comparison(result: Comparison, out: Console | None = None) -> None:
    """The comparison as tables: segment regressions first, then every metric overall.

    Printed to ``out`` (default: standard output), so a caller that prints JSON can silence it.
    """
    out = out if out is not None else render.stdout()
    mode = (
        "always-valid sequential intervals (safe to look daily)"
        if result.mode == "sequential"
        else "fixed-horizon intervals (valid for one look)"
    )
    start = _when(result.window_start) if result.window_start else "the start"
    out.print(
        Text.assemble(
            (result.candidate, "bold"),
            f" vs {result.baseline}",
        )
    )
    # The window on a line of its own, so a narrow terminal never splits a date from its time.
    out.print(f"window: {start} to {_when(result.window_end)}")
    if result.note:
        out.print(Text(result.note, "yellow"))
    out.print(
        Text(
            f"{mode}; {int((1 - result.alpha) * 100)}% intervals; p adjusted by "
            f"{result.correction.replace('-', ' ').title()}",
            "dim",
        )  # fmt: skip
    )
    srm = result.sample_ratio
    if srm.mismatch:
        out.print(
            Text(
                f"sample-ratio mismatch: {srm.counts[0]} vs {srm.counts[1]} points "
                f"(p = {srm.p_value:.2g}); do not trust these verdicts",
                "bold red",
            )
        )
    if not result.metrics:
        out.print(
            Text(
                "no metric was logged by both sides in this window yet: nothing to compare "
                "(a deployment logs them with log_metric)",
                "yellow",
            )
        )
        return
    regressions = [r for r in result.regressions if r.segment is not None]
    if regressions:
        out.print(comparison_table(regressions, "regressions by segment", out.width))
    out.print(comparison_table(result.metrics, "metrics", out.width))
    if result.segments and not regressions:
        out.print(comparison_table(result.segments, "by segment", out.width))


def comparison_table(rows: Any, title: str, width: int) -> Table:
    """One row per metric: both values, difference, interval, adjusted p, verdict, to fit
    ``width`` columns.

    Number columns keep their full width; when the terminal is narrow the columns close up to
    one space, the table drops its edges, the verdict wraps between its words, and only then
    does the metric name give way (with an ellipsis); a number is never cut.
    """
    cells = [
        (
            metric_label(r),
            num(r.baseline),
            num(r.candidate),
            num(r.difference, signed=True),
            interval(r),
            pvalue(r.adjusted_p),
            r.verdict,
        )
        for r in rows
    ]
    headers = ("metric", "base", "cand", "diff", "interval", "adj p", "verdict")
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)]
    longest_word = max([len(w) for c in cells for w in c[-1].split()], default=len(headers[-1]))
    verdict_min = max(longest_word, len(headers[-1]))

    def fits(gap: int, edges: int, verdict: int) -> bool:
        # the box draws a one-space rule between columns (plus padding) and an edge each side
        return sum(widths[:-1]) + verdict + (len(widths) - 1) * gap + edges <= width

    # Too wide: columns close up to one space, the table drops its edges, the verdict wraps
    # between its words, and only then is the metric name cut (with an ellipsis); numbers never.
    layouts = [(2, 2, widths[-1]), (1, 2, widths[-1]), (1, 0, widths[-1]), (1, 0, verdict_min)]
    gap, edges, verdict = next((lay for lay in layouts if fits(*lay)), layouts[-1])
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=edges > 0,
        pad_edge=False,
        padding=(0, gap - 1, 0, 0),
    )
    table.add_column("metric", overflow="ellipsis", min_width=8, max_width=24)
    for header, size in zip(headers[1:-1], widths[1:-1], strict=True):
        render.unbroken_column(table, header, justify="right", min_width=size)
    table.add_column("verdict", min_width=verdict_min, max_width=verdict)
    for cell in cells:
        table.add_row(*cell[:-1], Text(cell[-1], VERDICT_STYLE.get(cell[-1], "")))
    return table


def metric_label(row: MetricComparison) -> str:
    label = row.metric if row.segment is None else f"{row.metric}/{row.segment}"
    return label if row.statistic == "mean" else f"{label} ({row.statistic})"


def num(value: float, signed: bool = False) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:+.3g}" if signed else f"{value:.3g}"


def interval(row: MetricComparison) -> str:
    if row.low != row.low:
        return "-"
    return f"[{row.low:+.2g}, {row.high:+.2g}]"


def pvalue(value: float) -> str:
    if value != value:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def promote_command(
    name: Annotated[str, typer.Argument(help="The deployment to promote.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even when the gate is closed.")
    ] = False,
    split: SplitOption = None,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the promotion gate, then merge the deployment's commit into main.

    --json never asks (its output is for scripts), so it needs --yes.
    """
    if as_json and not yes:
        raise typer.BadParameter(
            "--json cannot ask for confirmation: pass --yes to promote", param_hint="--json"
        )
    ratio = expected_split(split)
    opened = open_lake(lake, namespace)
    _check_promotable(opened, name)
    outcome = tracking.check_promotion(opened, name, expected_ratio=ratio)
    if not as_json:
        print_gate(outcome)
    if not outcome.open and not force:
        if as_json:
            # A script reads stdout: the refusal is JSON too, with the exit code saying it.
            render.emit_json(_promotion_json(name, False, None, outcome.open, outcome.reasons))
            reasons = "; ".join(outcome.reasons)
            render.error_line(f"gate closed for {name}: {reasons} (--force promotes anyway)")
        raise typer.Exit(1)
    if not yes and not typer.confirm(f"merge {name} into main?", default=False):
        render.stderr().print("not promoted")
        raise typer.Exit(1)
    try:
        promotion = tracking.promote(opened, name, force=force, expected_ratio=ratio)
    except (tracking.GateClosedError, GateFailedError) as exc:
        if as_json:  # the gate closed meanwhile, or a policy gate of main refused the merge
            failed = tuple(getattr(exc, "reasons", None) or getattr(exc, "failures", None) or ())
            render.emit_json(_promotion_json(name, False, None, False, failed or (str(exc),)))
        raise
    if as_json:
        render.emit_json(
            _promotion_json(name, True, promotion.merge_commit, outcome.open, outcome.reasons)
        )
        return
    merged = render.short(promotion.merge_commit) if promotion.merge_commit else "(already in)"
    render.stdout().print(Text.assemble(("promoted ", "green"), (name, "bold"), f": main {merged}"))


def _promotion_json(
    name: str,
    promoted: bool,
    merge_commit: str | None,
    gate_open: bool,
    reasons: tuple[str, ...],
) -> dict[str, Any]:
    """What ``promote --json`` prints: promoted (``merge_commit`` None when ``main`` had the
    commit already), or refused (``promoted`` false; ``gate.reasons`` says why)."""
    return {
        "deployment": name,
        "promoted": promoted,
        "merge_commit": merge_commit,
        "gate": {"open": gate_open, "reasons": list(reasons)},
    }


def _check_promotable(lake: store.Lake, name: str) -> None:
    """Refuse, before the comparison and the question, what :func:`tracking.promote` would
    refuse after them: production, or a deployment no longer live (promoted or retired).

    Raises:
        DeploymentStateError: as :func:`tracking.promote` says it.
        DeploymentNotFoundError: no such deployment.
    """
    record = tracking.deployment(lake, name).record
    if record.is_production:
        raise tracking.DeploymentStateError(
            "production is main already; promote a branch deployment"
        )
    if record.status != "live":
        raise tracking.DeploymentStateError(f"deployment {name!r} is {record.status}, not live")


def print_gate(outcome: Gate) -> None:
    out = render.stdout()
    print_comparison(outcome.comparison)
    if outcome.open:
        out.print(Text("gate open: no regression, enough data, traffic split as expected", "green"))
    else:
        out.print(Text("gate closed:", "bold red"))
        for reason in outcome.reasons:
            out.print(Text(f"  - {reason}", "red"))


def undeploy_command(
    name: Annotated[str, typer.Argument(help="The deployment to retire.")],
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retire a deployment; its history stays queryable."""
    record = tracking.undeploy(open_lake(lake, namespace), name)
    if as_json:
        render.emit_json(_record_json(record))
        return
    render.stdout().print(Text.assemble(("retired ", "yellow"), (name, "bold")))


def ui_command(
    lake: LakeOption = DEFAULT_LAKE,
    port: Annotated[int, typer.Option("--port", help="Port to serve on (127.0.0.1).")] = 8501,
) -> None:
    """Open the dashboard (Streamlit) on a lake: compare deployments, browse branches and runs."""
    if importlib.util.find_spec("streamlit") is None:
        render.error_line("the dashboard needs Streamlit: pip install 'flowlake[ui]'")
        raise typer.Exit(1)
    location = lake if "://" in lake else os.path.abspath(lake)
    open_lake(location, None).close()  # a clear error now rather than in the browser
    env = {**os.environ, "FLOWLAKE_LAKE": location}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.address=127.0.0.1",
        f"--server.port={port}",
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
    ]
    render.stderr().print(f"dashboard on http://127.0.0.1:{port} (lake {location})")
    sys.stdout.flush()
    sys.stderr.flush()
    # Streamlit takes this process's place: a stop signal (Ctrl-C, docker stop, systemd)
    # reaches the server itself, and no server outlives a killed `flowlake ui`.
    os.execve(sys.executable, command, env)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _record_json(record: Any) -> dict[str, Any]:
    return {
        "name": record.name,
        "branch": record.branch,
        "commit": record.commit,
        "model": record.model,
        "user": record.user,
        "deployed_at": record.deployed_at.isoformat() if record.deployed_at else None,
        "status": record.status,
        "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        "merge_commit": record.merge_commit,
    }
