"""The dashboard's pages: one short function each, drawing what :mod:`ui.dashboard.data` returns."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from store.errors import StoreError
from ui.dashboard import data

#: Verdict colours: the colour code of the Compare table and the verdict lines.
VERDICT_COLOUR = {
    "better": "green",
    "worse": "red",
    "changed": "orange",
    "not significant": "gray",
    "not enough data": "gray",
}
_CELL = {"green": "#d3f4dc", "red": "#fbd5d5", "orange": "#fde8c8", "gray": ""}
MODE_TEXT = {
    "sequential": "always-valid sequential intervals (confidence sequences), safe to look daily",
    "fixed": "fixed-horizon intervals (Welch's t): valid for a single look only",
}


def start_page(problem: str | None) -> None:
    """What to do first, for a missing lake or one with nothing to show yet."""
    st.title("flowlake")
    if problem:
        st.info(problem)
    st.markdown(
        "1. Create a lake and branch it: `flowlake init`, `flowlake branch create exp`\n"
        '2. Track runs: `tracking.start_run(lake, branch="exp")`\n'
        "3. Deploy a branch next to production: `flowlake deploy cand --branch exp`\n"
        '4. Log live outcomes: `tracking.deployment(lake, "cand").log_metric(...)`\n\n'
        "Or see it all at once: `flowlake demo`, then `flowlake ui --lake <demo lake>`."
    )


def compare_page(location: str) -> None:
    heads = data.version(location)
    records = data.deployments(location, heads)
    candidates = [r.name for r in records if r.name != "production" and r.status == "live"]
    st.title("Compare")
    if not candidates:
        start_page("No branch deployment is live yet: deploy one with `flowlake deploy`.")
        return
    candidate = st.selectbox("candidate deployment", candidates)
    others = ["production", *[r.name for r in records if r.name not in ("production", candidate)]]
    baseline = st.selectbox("baseline", others)
    mode = st.radio("intervals", ["sequential", "fixed"], horizontal=True)
    try:
        result = data.comparison(location, candidate, baseline, mode, heads)
    except StoreError as exc:  # e.g. a baseline never live at the same time (NoOverlapError)
        st.error(f"Cannot compare {candidate} with {baseline}: {exc}")
        return
    st.caption(
        f"Mode: {MODE_TEXT[mode]}. p-values adjusted by Benjamini-Hochberg. "
        f"Window: {_when(result.window_start)} to {_when(result.window_end)} UTC."
    )
    if result.sample_ratio.mismatch:
        b, c = result.sample_ratio.counts
        st.error(f"Sample-ratio mismatch ({b} vs {c} points): do not trust these verdicts.")
    for row in result.regressions:
        where = f" in segment **{row.segment}**" if row.segment else " overall"
        st.error(f"Regression: **{row.metric}**{where}: {row.candidate:.4g} vs {row.baseline:.4g}")
    for row in result.metrics:
        st.markdown(
            f"**{row.metric}**: :{VERDICT_COLOUR[row.verdict]}[{row.verdict}] "
            f"({row.candidate:.4g} vs {row.baseline:.4g}, adjusted p {row.adjusted_p:.3g})"
        )
    table = data.metric_table((*result.metrics, *result.segments))
    styled = (
        table.style.map(
            lambda v: (
                f"background-color: {_CELL[VERDICT_COLOUR[v]]}"
                if _CELL.get(VERDICT_COLOUR.get(v, "gray"))
                else ""
            ),
            subset=["verdict"],
        )
        .format(precision=4, subset=["baseline", "candidate", "difference", "low", "high"])
        .format("{:.1f}", subset=["relative %"])
    )
    st.dataframe(styled, hide_index=True, key="metrics-table")
    timeline = data.timeline_frame(result)
    if not timeline.empty:
        metric = st.selectbox("metric over time", sorted(timeline["metric"].unique()))
        chosen = timeline[timeline["metric"] == metric]
        st.altair_chart(_values_chart(chosen, candidate, baseline))
        st.altair_chart(_timeline_chart(chosen))
    _promote_box(location, candidate, baseline, mode, result)


def _when(moment: object) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if hasattr(moment, "strftime") else "the start"


def _values_chart(frame: pd.DataFrame, candidate: str, baseline: str) -> alt.Chart:
    """Both deployments' cumulative means per day."""
    long = frame.melt("day", ["baseline", "candidate"], var_name="side", value_name="mean")
    long["side"] = long["side"].map({"baseline": baseline, "candidate": candidate})
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("day:T", title="day"),
            y=alt.Y("mean:Q", title="cumulative mean", scale=alt.Scale(zero=False)),
            color=alt.Color("side:N", title=None),
        )
    )


def _timeline_chart(frame: pd.DataFrame) -> alt.LayerChart | alt.FacetChart:
    base = alt.Chart(frame).encode(x=alt.X("day:T", title="day"))
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y("low:Q", title="cumulative difference (candidate - baseline)"), y2="high:Q"
    )
    line = base.mark_line(point=True).encode(y="difference:Q")
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(strokeDash=[4, 4]).encode(y="y:Q")
    return alt.layer(band, line, zero)


def _promote_box(location: str, candidate: str, baseline: str, mode: str, result: object) -> None:
    st.subheader("Promote")
    asked = st.session_state.get("promote-asked") == candidate
    if not asked:
        if st.button(f"Promote {candidate}", key="promote"):
            st.session_state["promote-asked"] = candidate
            st.rerun()
        return
    outcome = data.gate(result)  # type: ignore[arg-type]
    if outcome.open:
        st.success("Gate open: no regression, enough data, traffic split as expected.")
    else:
        st.error("Gate closed: " + "; ".join(outcome.reasons))
        return
    if st.button(f"Confirm: merge {candidate} into main", key="confirm", type="primary"):
        try:
            promotion = data.promote(location, candidate, baseline, mode)
        except StoreError as exc:
            st.error(f"Not promoted: {exc}")
            return
        st.session_state.pop("promote-asked", None)
        st.success(f"Promoted: main moved to {(promotion.merge_commit or '')[:12]}")


def branches_page(location: str) -> None:
    st.title("Branches")
    frame = data.branches(location, data.version(location))
    st.dataframe(frame, hide_index=True)


def runs_page(location: str) -> None:
    st.title("Runs")
    heads = data.version(location)
    frame = data.runs(location, heads)
    if frame.empty:
        st.info("No runs yet: start one with `tracking.start_run(lake, branch=...)`.")
    else:
        statuses = st.multiselect("status", sorted(frame["status"].unique()))
        text = st.text_input("name contains")
        shown = frame[frame["status"].isin(statuses)] if statuses else frame
        if text:
            shown = shown[shown["name"].fillna("").str.contains(text, case=False, regex=False)]
        st.dataframe(shown, hide_index=True)
        run_id = st.selectbox("run", shown["run_id"].tolist())
        if run_id:
            _run_details(location, run_id, heads)
    query = st.text_area("SQL (read-only, over the tracking views)", "SELECT * FROM runs LIMIT 20")
    if st.button("Run query"):
        try:
            st.dataframe(data.sql(location, query, heads), hide_index=True)
        except StoreError as exc:
            st.error(str(exc))


def _run_details(location: str, run_id: str, heads: tuple[tuple[str, str], ...]) -> None:
    details = data.run_details(location, run_id, heads)
    record = details.record
    st.subheader(f"{record.name or 'run'} · {record.status}")
    st.write(
        {
            "input commit": record.input_commit,
            "output commit": record.output_commit,
            "git commit": record.git_commit,
            "upstream runs": [r.run_id for r in details.lineage.parent_runs],
            "used by": [r.run_id for r in details.lineage.used_by],
        }
    )
    st.dataframe(details.params, hide_index=True)
    for key, history in details.metrics.items():
        x = "step" if history["step"].notna().any() else "timestamp"
        st.line_chart(history, x=x, y="value", height=200)
        st.caption(key)
    if not details.artifacts.empty:
        st.dataframe(details.artifacts, hide_index=True)


def diff_page(location: str) -> None:
    st.title("Diff")
    left_ref = st.text_input("from ref", "main~1")
    right_ref = st.text_input("to ref", "main")
    try:
        left, right = data.resolve(location, left_ref), data.resolve(location, right_ref)
    except StoreError as exc:
        st.warning(str(exc))
        return
    changes = data.changes(location, left, right)
    counts = changes["change"].value_counts().to_dict() if not changes.empty else {}
    st.write({kind: counts.get(kind, 0) for kind in ("added", "removed", "changed")})
    st.dataframe(changes, hide_index=True)
    tables = changes[changes["path"].str.endswith(".parquet")]["path"].tolist()
    if not tables:
        return
    path = st.selectbox("table", tables)
    kinds = dict(zip(changes["path"], changes["change"], strict=True))
    commit = left if kinds[path] == "removed" else right
    key = st.selectbox("key column", data.table_columns(location, path, commit))
    diff = data.row_diff(location, path, left, right, key)
    st.write({"added rows": diff.added, "removed rows": diff.removed, "changed rows": diff.changed})
    for label, frame in (
        ("added", diff.added_rows),
        ("removed", diff.removed_rows),
        ("changed", diff.changed_rows),
    ):
        if not frame.empty:
            st.caption(f"{label} (sample)")
            st.dataframe(frame, hide_index=True)
