"""Compaction of finished runs' metric parts in the lake (tracking.compact): every view reads
the same rows before and after, with or without the local index; older refs keep their parts; a
killed compaction leaves the branch fully old or fully compacted; live runs are never touched.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import store
import tracking
from store.errors import BranchNotFoundError, DirtyBranchError, InvalidArgumentError
from tracking import layout
from tracking.compaction import EVENT

REPO = str(Path(__file__).resolve().parents[1])

#: The views a compaction could change (metrics; runs, whose output commit readers may take
#: from a run branch's head) and one it must not (params), each with an ORDER BY that makes the
#: order SQL defines total.
VIEWS = {
    "metrics": "run_id, key, step, timestamp, value",
    "runs": "run_id",
    "params": "run_id, key",
}


def _finished_runs(lake: store.Lake, branch: str, runs: int = 3, parts: int = 3) -> list[str]:
    """``runs`` finished runs merged into ``branch``, each with ``parts`` metric parts holding
    NaN, infinities, null steps and repeated steps."""
    ids = []
    for r in range(runs):
        with tracking.start_run(lake, branch=branch, name=f"r{r}", snapshot_code=False) as run:
            run.log_params({"lr": 0.1 * (r + 1)})
            run.set_tag("stage", "x")
            for p in range(parts):
                run.log_metric("loss", 1.0 / (p + 1), step=p)
                run.log_metric("acc", float("nan") if p == 1 else p / 10, step=p)
                run.log_metric("acc", float("inf"), step=p)  # a repeated step
                run.log_metric("lr", 0.5 * r)  # no step
                run.flush()
        ids.append(run.id)
    return ids


def _cell(value: Any) -> Any:
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def _view_rows(
    lake: store.Lake, ref: str | None, exclude: str = "commit"
) -> dict[str, list[tuple[Any, ...]]]:
    """Every view's rows at ``ref`` (None: the live view), in SQL order, without ``commit``
    (a branch's head moves with the compaction; what it reads must not)."""
    out = {}
    for view, order in VIEWS.items():
        query = f"SELECT * EXCLUDE ({exclude}) FROM {view} ORDER BY {order}"
        table = tracking.sql(lake, query, ref)
        out[view] = [tuple(_cell(v) for v in row.values()) for row in table.to_pylist()]
    return out


def _metric_rows(lake: store.Lake, ref: str) -> list[tuple[Any, ...]]:
    """The metrics view's rows at ``ref``, in SQL order, without the columns naming where they
    were read (they differ between branches that read the same objects)."""
    query = f"SELECT * EXCLUDE (commit, ref, branch) FROM metrics ORDER BY {VIEWS['metrics']}"
    return [tuple(_cell(v) for v in r.values()) for r in tracking.sql(lake, query, ref).to_pylist()]


def _metric_parts(lake: store.Lake, ref: str, run_id: str) -> list[str]:
    prefix = layout.run_file(run_id, layout.METRICS_DIR) + "/"
    return [o.path.rsplit("/", 1)[1] for o in lake.list(ref, prefix=prefix)]


def _drop_index() -> None:
    shutil.rmtree(os.environ["FLOWLAKE_CACHE_DIR"], ignore_errors=True)


def test_views_read_the_same_rows_after_compaction_with_or_without_the_index(
    lake: store.Lake,
) -> None:
    exp = lake.branch("exp", source="main")
    ids = _finished_runs(lake, exp.name, runs=2)
    lake.tag("before", exp.name)
    listing_before = lake.list("before", prefix=layout.RUNS_PREFIX)
    refs: list[str | None] = [None, exp.name, "before"]
    expected = {ref: _view_rows(lake, ref) for ref in refs}
    history = {i: tracking.get_metric_history(lake, i, "acc").to_pylist() for i in ids}
    outputs = {i: tracking.get_run(lake, i).output_commit for i in ids}
    assert len(expected[exp.name]["metrics"]) == 2 * 3 * 4

    done = tracking.compact(lake, branch=exp.name)  # the target branch
    everything = tracking.compact(lake)  # every branch of the namespace: the run branches too
    (on_exp,) = done
    assert on_exp.commit == exp.head().id
    assert {r.run_id for r in on_exp.runs} == set(ids)
    assert all(r.parts == 3 and r.points == 12 for r in on_exp.runs)
    commit = lake.commit(on_exp.commit)
    assert commit.metadata["tracking.event"] == EVENT
    assert commit.metadata["tracking.compacted_runs"] == "2"
    assert commit.metadata["tracking.compacted_parts"] == "6"
    assert commit.metadata["tracking.compacted_points"] == "24"
    run_branches = {c.branch for c in everything if c.commit is not None}
    assert run_branches == {f"user:tester/{layout.run_branch_short(i)}" for i in ids}
    for run_id in ids:
        assert _metric_parts(lake, exp.name, run_id) == ["part-00000000-00000002.parquet"]
        assert _metric_parts(lake, layout.run_branch_short(run_id), run_id) == [
            "part-00000000-00000002.parquet"
        ]
        assert len(_metric_parts(lake, "before", run_id)) == 3

    for attempt in ("index kept", "index deleted"):
        if attempt == "index deleted":
            _drop_index()
        for ref in refs:
            assert _view_rows(lake, ref) == expected[ref], (attempt, ref)
        for run_id in ids:
            got = tracking.get_metric_history(lake, run_id, "acc").to_pylist()
            assert [{k: _cell(v) for k, v in p.items()} for p in got] == [
                {k: _cell(v) for k, v in p.items()} for p in history[run_id]
            ]
        assert {i: tracking.get_run(lake, i).output_commit for i in ids} == outputs
    # History at a ref older than the compaction: the very same objects.
    assert lake.list("before", prefix=layout.RUNS_PREFIX) == listing_before

    # A second compaction finds nothing to do and commits nothing.
    heads = {b.name: b.head for b in lake.branches()}
    again = tracking.compact(lake)
    assert all(c.commit is None and not c.runs for c in again)
    assert {b.name: b.head for b in lake.branches()} == heads


def test_compacted_branches_merge_without_conflicts_and_resumed_runs_continue(
    lake: store.Lake,
) -> None:
    exp = lake.branch("exp", source="main")
    ids = _finished_runs(lake, exp.name, runs=2, parts=2)
    other = lake.branch("other", source=exp.name)
    tracking.compact(lake, branch=exp.name)
    tracking.compact(lake, branch=other.name)  # the same runs, compacted independently
    rows = _view_rows(lake, exp.name)
    lake.merge(other.name, into=exp.name)  # identical compactions agree: no conflict
    assert _view_rows(lake, exp.name) == rows

    tracking.compact(lake)  # the run branches too (their records gain the output commit)
    # A run resumed after the compaction numbers its next part after the compacted range,
    # and its end merges into the compacted branch without a conflict.
    with tracking.resume_run(lake, ids[0]) as run:
        run.log_metric("loss", 0.01, step=9)
    assert sorted(_metric_parts(lake, exp.name, ids[0])) == [
        "part-00000000-00000001.parquet",
        "part-00000002.parquet",
    ]
    lake.merge(exp.name, into=other.name)
    points = "SELECT count(*) AS n FROM metrics WHERE run_id = ?"
    for ref in (exp.name, other.name):
        assert tracking.sql(lake, points, ref, params=[ids[0]])["n"][0].as_py() == 2 * 4 + 1
    (again,) = tracking.compact(lake, branch=exp.name)
    assert [r.path.rsplit("/", 1)[1] for r in again.runs] == ["part-00000000-00000002.parquet"]
    assert tracking.sql(lake, points, exp.name, params=[ids[0]])["n"][0].as_py() == 9


def test_live_runs_are_left_alone_and_lose_no_points_written_during_compaction(
    lake: store.Lake,
) -> None:
    exp = lake.branch("exp", source="main")
    _finished_runs(lake, exp.name, runs=1, parts=2)
    live = tracking.start_run(lake, branch=exp.name, name="live", snapshot_code=False)
    logged = 0
    for step in range(3):
        live.log_metric("loss", 1.0 / (step + 1), step=step)
        logged += 1
        live.flush()
    (skipped,) = tracking.compact(lake, branch=live.run_branch)
    assert skipped.commit is None and skipped.skipped[0][0] == live.id

    stop = threading.Event()

    def log() -> None:
        nonlocal logged
        while not stop.is_set():
            live.log_metric("loss", 0.5, step=logged)
            logged += 1
            live.flush()

    writer = threading.Thread(target=log)
    writer.start()
    try:
        swept = tracking.compact(lake)
    finally:
        stop.set()
        writer.join()
    assert any(c.commit is not None for c in swept)  # the finished run was compacted
    assert all(c.runs == () for c in swept if c.branch == live.run_branch)
    live.end()
    count = tracking.sql(
        lake, "SELECT count(*) AS n FROM metrics WHERE run_id = ?", params=[live.id]
    )
    assert count["n"][0].as_py() == logged


def _interleave(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Run ``action`` once, inside the compaction's transaction, just before its first write:
    after it planned and began, before it merges."""
    original = store.Branch.write_table
    pending = [action]

    def write_table(self: store.Branch, path: str, table: Any, **options: Any) -> Any:
        if pending and layout.part_range(path) and "-" in path.rsplit("part-", 1)[1]:
            pending.pop()()
        return original(self, path, table, **options)

    monkeypatch.setattr(store.Branch, "write_table", write_table)


def test_a_run_resumed_during_compaction_of_its_target_branch_keeps_every_point(
    lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = lake.branch("exp", source="main")
    (run_id,) = _finished_runs(lake, exp.name, runs=1, parts=3)

    def resume_and_finish() -> None:
        with tracking.resume_run(lake, run_id) as run:
            run.log_metric("late", 1.0, step=99)  # merged into exp while compaction runs

    _interleave(monkeypatch, resume_and_finish)
    (done,) = tracking.compact(lake, branch=exp.name)
    assert done.commit is not None
    assert sorted(_metric_parts(lake, exp.name, run_id)) == [
        "part-00000000-00000002.parquet",
        "part-00000003.parquet",
    ]
    count = "SELECT count(*) AS n FROM metrics WHERE run_id = ?"
    assert tracking.sql(lake, count, exp.name, params=[run_id])["n"][0].as_py() == 3 * 4 + 1


def test_a_run_resumed_during_compaction_of_its_own_branch_is_left_alone(
    lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = lake.branch("exp", source="main")
    (run_id,) = _finished_runs(lake, exp.name, runs=1, parts=3)
    own = f"user:tester/{layout.run_branch_short(run_id)}"
    resumed: list[tracking.Run] = []
    _interleave(monkeypatch, lambda: resumed.append(tracking.resume_run(lake, run_id)))
    (done,) = tracking.compact(lake, branch=own)
    # The resume committed on the run branch after the compaction read the record: the
    # serializable transaction conflicts, and on its retry the run is live.
    assert done.commit is None and done.skipped[0][0] == run_id
    (run,) = resumed
    run.log_metric("late", 1.0, step=99)
    run.end()  # the session was never disturbed: its branch did not move under it
    count = "SELECT count(*) AS n FROM metrics WHERE run_id = ?"
    assert tracking.sql(lake, count, params=[run_id])["n"][0].as_py() == 3 * 4 + 1
    assert len(_metric_parts(lake, own, run_id)) == 4


def test_bad_input_is_refused_and_changes_nothing(lake: store.Lake) -> None:
    exp = lake.branch("exp", source="main")
    _finished_runs(lake, exp.name, runs=1, parts=2)
    heads = {b.name: b.head for b in lake.branches()}
    with pytest.raises(BranchNotFoundError, match="nope"):
        tracking.compact(lake, branch="nope")
    with pytest.raises(InvalidArgumentError, match="min_parts"):
        tracking.compact(lake, branch=exp.name, min_parts=1)
    exp.write_bytes("notes.txt", b"uncommitted")
    with pytest.raises(DirtyBranchError, match="uncommitted changes"):
        tracking.compact(lake, branch=exp.name)
    (dry,) = tracking.compact(lake, branch=exp.name, dry_run=True)
    assert dry.commit is None and len(dry.runs) == 1 and dry.runs[0].parts == 2
    assert {b.name: b.head for b in lake.branches()} == heads
    assert [c.path for c in exp.uncommitted()] == ["notes.txt"]


# -- a compaction killed mid-way ----------------------------------------------------------------

_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import store, tracking
    from store.branch import Branch
    from store.lake import Lake
    from tracking.compaction import compact

    lake_path, branch, kill_at, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    calls = [0]

    def counted(function):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = function(*args, **kwargs)
            if calls[0] == kill_at and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapper

    # Every step a compaction takes that writes: each part, each delete, the scratch commit, the
    # merge into the branch and the scratch branch's removal.
    for cls, name in [(Branch, "write_table"), (Branch, "delete"), (Branch, "commit"),
                      (Lake, "merge"), (Lake, "delete_branch")]:
        setattr(cls, name, counted(getattr(cls, name)))
    compact(store.open(lake_path), branch=branch)
    print(calls[0], flush=True)
    """
)


def _compact_in_child(lake_path: str, branch: str, kill_at: int, when: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED, lake_path, branch, str(kill_at), when],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
        timeout=120,
    )
    if kill_at:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_compaction_killed_at_any_step_leaves_the_branch_old_or_compacted(
    embedded_lake: store.Lake,
) -> None:
    lake = embedded_lake
    exp = lake.branch("exp", source="main")
    ids = _finished_runs(lake, exp.name, runs=2, parts=3)
    old = exp.head().id
    expected = _metric_rows(lake, exp.name)
    # A full compaction of a copy of the branch counts its steps: 2 part writes, 2 deletes, the
    # scratch commit, the merge, the scratch branch's removal.
    lake.branch("count", source=old)
    assert _compact_in_child(lake.location, "user:tester/count", 0, "never") == "7"
    # Killed with a part written, with everything staged, with the scratch commit made, and with
    # the merge done but the scratch branch left behind.
    for kill_at in (1, 4, 5, 6):
        name = f"killed-{kill_at}"
        lake.branch(name, source=old)
        _compact_in_child(lake.location, f"user:tester/{name}", kill_at, "after")
        head = lake.get_branch(name).head()
        parts = [_metric_parts(lake, f"user:tester/{name}", i) for i in ids]
        if head.id == old:
            assert kill_at < 6 and all(len(p) == 3 for p in parts), (name, parts)
        else:
            assert kill_at == 6 and head.metadata["tracking.event"] == EVENT, name
            assert all(p == ["part-00000000-00000002.parquet"] for p in parts), (name, parts)
        assert _metric_rows(lake, f"user:tester/{name}") == expected, name
        # Whatever a killed compaction left behind, the next one completes (or has nothing to do).
        (done,) = tracking.compact(lake, branch=name)
        assert (done.commit is None) == (head.id != old)
        assert all(len(_metric_parts(lake, f"user:tester/{name}", i)) == 1 for i in ids)
        assert _metric_rows(lake, f"user:tester/{name}") == expected, name
    assert lake.fsck() == []


def test_cli_runs_compact_dry_run_then_compacts_and_refuses_unknown_branches(
    embedded_lake: store.Lake,
) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    lake = embedded_lake
    exp = lake.branch("exp", source="main")
    (run_id,) = _finished_runs(lake, exp.name, runs=1, parts=2)
    where = ["--lake", lake.location]
    cli = CliRunner()
    dry = cli.invoke(app, ["runs", "compact", "--branch", "exp", "--dry-run", "--json", *where])
    assert dry.exit_code == 0, dry.output
    (planned,) = json.loads(dry.output)
    assert planned["commit"] is None and planned["runs"][0]["parts"] == 2
    assert len(_metric_parts(lake, exp.name, run_id)) == 2
    done = cli.invoke(app, ["runs", "compact", "--branch", "exp", *where])
    assert done.exit_code == 0, done.output
    assert "compacted: 1 run(s) on 1 branch(es)" in done.output
    assert _metric_parts(lake, exp.name, run_id) == ["part-00000000-00000001.parquet"]
    listed = cli.invoke(app, ["runs", "--json", *where])
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["run_id"] == run_id
    bad = cli.invoke(app, ["runs", "compact", "--branch", "nope", *where])
    assert bad.exit_code == 1 and "nope" in bad.output


def test_cli_runs_compact_counts_a_run_once_across_its_branches_and_says_when_nothing_is_left(
    embedded_lake: store.Lake,
) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    lake = embedded_lake
    exp = lake.branch("exp", source="main")
    _finished_runs(lake, exp.name, runs=2, parts=2)
    where = ["--lake", lake.location]
    cli = CliRunner()
    planned = json.loads(cli.invoke(app, ["runs", "compact", "--dry-run", "--json", *where]).stdout)
    with_runs = [c for c in planned if c["runs"]]
    assert len(with_runs) > 1  # the target branch and the runs' own branches
    done = cli.invoke(app, ["runs", "compact", *where], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert f"compacted: 2 run(s) on {len(with_runs)} branch(es)" in done.stdout
    for c in with_runs:
        assert c["branch"] in done.stdout
    again = cli.invoke(app, ["runs", "compact", *where])
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "nothing to compact"
