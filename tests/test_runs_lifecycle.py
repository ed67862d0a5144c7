"""Run lifecycle: metric points checked at the call, tables kept as pandas keeps them, one
session per run at a time, and what an empty run costs in commits and repeated work.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import store
import tracking
from tracking import environment, layout, points, snapshot
from tracking.lifecycle import CLAIM_TAG_PREFIX


def _start(lake: store.Lake, branch: str | None, name: str, **kw: object) -> tracking.Run:
    kw.setdefault("snapshot_code", False)
    return tracking.start_run(lake, branch=branch, name=name, **kw)  # type: ignore[arg-type]


# -- metric points ---------------------------------------------------------------------------

NOW_MS = int(time.time() * 1000)

BAD_POINTS = [
    pytest.param(("k", 1.0, 2**63, None), "64-bit integer range", id="step-past-int64"),
    pytest.param(("k", 1.0, -(2**63) - 1, None), "64-bit integer range", id="step-below-int64"),
    pytest.param(("k", 1.0, 1.5, None), "not an integer", id="float-step"),
    pytest.param(("k", 1.0, True, None), "not an integer", id="bool-step"),
    pytest.param(("k", 1.0, 0, time.time_ns()), "nanoseconds", id="timestamp-ns"),
    pytest.param(("k", 1.0, 0, NOW_MS * 1000), "microseconds", id="timestamp-us"),
    pytest.param(("k", 1.0, 0, NOW_MS // 1000), "seconds", id="timestamp-s"),
    pytest.param(("k", 1.0, 0, -1), "between 2000-01-01", id="timestamp-negative"),
    pytest.param(("k", 1.0, 0, float("nan")), "between 2000-01-01", id="timestamp-nan"),
    pytest.param(("k", 1.0, 0, "now"), "not a number of milliseconds", id="timestamp-text"),
    pytest.param(("k", "0.5", 0, None), "not a real number", id="value-text"),
    pytest.param(("k", None, 0, None), "not a real number", id="value-none"),
    pytest.param(("k", 1j, 0, None), "not a real number", id="value-complex"),
    pytest.param(("k", 10**400, 0, None), "too large", id="value-huge-int"),
    pytest.param(("k", np.zeros(3), 0, None), "not a real number", id="value-array"),
    pytest.param(("", 1.0, 0, None), "non-empty string", id="key-empty"),
    pytest.param((3, 1.0, 0, None), "non-empty string", id="key-not-text"),
    pytest.param(("a\x00b", 1.0, 0, None), "control", id="key-nul"),
    pytest.param(("a\ud800", 1.0, 0, None), "unencodable", id="key-lone-surrogate"),
    pytest.param(("k" * 251, 1.0, 0, None), "at most 250", id="key-too-long"),
]


@pytest.mark.parametrize(("point", "message"), BAD_POINTS)
def test_bad_metric_point_is_refused_by_check_point(point: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(tracking.InvalidMetricError, match=message) as info:
        points.check_point(*point)
    assert isinstance(info.value, store.errors.InvalidArgumentError)
    assert isinstance(info.value, ValueError)


def test_check_point_normalises_what_it_accepts() -> None:
    assert points.check_point("k", 3, 2**63 - 1, NOW_MS, time.time) == (
        "k",
        3.0,
        2**63 - 1,
        NOW_MS / 1000,
    )
    assert points.check_point("k", np.float32(0.5), np.int64(-5), None, lambda: 7.0) == (
        "k",
        0.5,
        -5,
        7.0,
    )
    assert points.check_point("k", np.array(2.5), None, None, lambda: 1.0)[1] == 2.5
    assert points.check_point("k", True, None, None, lambda: 1.0)[1] == 1.0
    for special in (math.nan, math.inf, -math.inf):
        value = points.check_point("lösung / val acc", special, 0, None, lambda: 1.0)[1]
        assert value == special or (math.isnan(value) and math.isnan(special))


def test_bad_points_are_refused_at_the_call_and_never_poison_the_run(lake: store.Lake) -> None:
    exp = lake.branch("exp", source="main")
    run = _start(lake, exp.name, "validated")
    log = run.log_metric
    log("good", 1.0, step=1)
    for case in BAD_POINTS:
        key, value, step, timestamp = case.values[0]
        with pytest.raises(tracking.InvalidMetricError):
            log(key, value, step=step, timestamp=timestamp)
    with pytest.raises(tracking.InvalidMetricError, match="64-bit"):
        run.log_metrics({"good": 2.0, "other": 3.0}, step=2**64)
    with pytest.raises(tracking.InvalidMetricError, match="not a real number"):
        run.log_metrics({"good": 2.0, "other": "x"}, step=2)  # none of the two is kept
    log("good", 2, step=2)  # an int value
    log("good", float("nan"), step=3)
    log("good", float("inf"), step=4, timestamp=NOW_MS)
    run.log_metrics({"good": -math.inf, "other": np.float64(0.25)}, step=5)
    log("good", 2**60 + 1, step=6)  # not exactly a float: converted at the call, not at flush
    run.end()
    assert tracking.get_run(lake, run.id).status == "finished"
    rows = tracking.sql(
        lake,
        "SELECT key, step, value, epoch_ms(timestamp) AS ms FROM metrics ORDER BY key, step",
    ).to_pylist()
    assert [(r["key"], r["step"]) for r in rows] == [
        ("good", 1),
        ("good", 2),
        ("good", 3),
        ("good", 4),
        ("good", 5),
        ("good", 6),
        ("other", 5),
    ]
    values = [r["value"] for r in rows]
    assert values[:2] == [1.0, 2.0] and math.isnan(values[2])
    assert values[3:] == [math.inf, -math.inf, float(2**60), 0.25]
    assert rows[3]["ms"] == NOW_MS
    assert all(r["ms"] > points.MIN_TIMESTAMP_MS for r in rows)


# -- tables ----------------------------------------------------------------------------------

FRAMES = [
    pytest.param(
        pd.DataFrame({"score": [0.9, 0.1]}, index=pd.Index(["c-101", "c-202"], name="customer")),
        id="named-index",
    ),
    pytest.param(
        pd.DataFrame(
            {"v": [1, 2, 3]},
            index=pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["g", "i"]),
        ),
        id="multi-index",
    ),
    pytest.param(pd.DataFrame({"v": [1, 2]}, index=[10, 20]), id="unnamed-non-default-index"),
    pytest.param(pd.DataFrame({"v": [1, 2]}, index=pd.RangeIndex(5, 7)), id="shifted-range"),
    pytest.param(pd.DataFrame({"v": [1.5, 2.5]}), id="default-range"),
]


@pytest.mark.parametrize("frame", FRAMES)
def test_dataframes_read_back_as_pandas_own_parquet_round_trip(
    lake: store.Lake, frame: pd.DataFrame
) -> None:
    own = io.BytesIO()
    frame.to_parquet(own)
    expected = pd.read_parquet(io.BytesIO(own.getvalue()))
    exp = lake.branch("exp", source="main")
    exp.write_table("t.parquet", frame)
    pd.testing.assert_frame_equal(exp.read_table("t.parquet").to_pandas(), expected)
    exp.commit("table")
    with _start(lake, exp.name, "tables") as run:
        art = run.log_table("t", frame)
    pd.testing.assert_frame_equal(lake.read_table(art.path, ref=exp.name).to_pandas(), expected)


# -- one session at a time -------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_OWNER = textwrap.dedent(
    """
    import sys, time, store, tracking
    lake = store.open(sys.argv[1])
    run = tracking.start_run(lake, branch=sys.argv[2], name="shared", snapshot_code=False,
                             heartbeat_interval=float(sys.argv[3]))
    run.log_metric("x", -1.0, step=-1)
    run.flush()
    print(run.id, flush=True)
    time.sleep(600)
    """
)

_RESUMER = textwrap.dedent(
    """
    import sys, store, tracking
    lake = store.open(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()                  # all resumers go at once
    try:
        run = tracking.resume_run(lake, sys.argv[2])
    except tracking.RunStateError as exc:
        print("refused", exc, flush=True)
        sys.exit(0)
    print("in", flush=True)
    sys.stdin.readline()                  # every session that got in is open before any logs
    for i in range(200):
        run.log_metric("x", float(i), step=int(sys.argv[3]) * 1000 + i)
    run.end()
    print("ended", flush=True)
    """
)


def _spawn(code: str, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=REPO),
        text=True,
    )


def _dead_run(lake_location: str, branch: str) -> str:
    """A run whose process was SIGKILLed after flushing one point."""
    owner = _spawn(_OWNER, lake_location, branch, "10")
    try:
        assert owner.stdout is not None
        run_id = owner.stdout.readline().strip()
        assert len(run_id) == 32, run_id
    finally:
        owner.kill()
        owner.wait(timeout=30)
    return run_id


@pytest.fixture
def lake_location(lake_access) -> str:  # type: ignore[no-untyped-def]
    """The lake's location; the environment lets another process open it by that."""
    return str(lake_access.location)


def test_concurrent_resumes_let_exactly_one_session_in(
    lake: store.Lake, lake_location: str
) -> None:
    exp = lake.branch("exp", source="main")
    run_id = _dead_run(lake_location, exp.name)
    expected = [-1]
    # Trial 0 races on a killed run, trial 1 on the finished run the winner left.
    for trial in range(2):
        procs = [_spawn(_RESUMER, lake_location, run_id, f"{trial}{k}", stdin=True) for k in "123"]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            first = [p.stdout.readline().split()[0] for p in procs if p.stdout is not None]
            for p, said in zip(procs, first, strict=True):
                if said == "in":  # a refused resumer has exited: its stdin is closed
                    assert p.stdin is not None
                    p.stdin.write("log\n")
                    p.stdin.flush()
            outs = [p.communicate(timeout=120)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert sorted(first) == ["in", "refused", "refused"], (first, outs)
        assert all(p.returncode == 0 for p in procs)
        expected += [int(f"{trial}{first.index('in') + 1}") * 1000 + i for i in range(200)]
        steps = tracking.get_metric_history(lake, run_id, "x").column("step").to_pylist()
        assert steps == sorted(expected)
        rows = tracking.sql(
            lake, "SELECT status, sessions FROM runs WHERE run_id = ?", params=[run_id]
        ).to_pylist()
        assert rows == [{"status": "finished", "sessions": 2 + trial}]
    assert not [t for t in lake.tags() if t.startswith(CLAIM_TAG_PREFIX)]


def test_resume_is_refused_while_the_original_process_lives(
    lake: store.Lake, lake_location: str
) -> None:
    exp = lake.branch("exp", source="main")
    owner = _spawn(_OWNER, lake_location, exp.name, "0.05")
    try:
        assert owner.stdout is not None
        run_id = owner.stdout.readline().strip()
        os.kill(owner.pid, signal.SIGSTOP)  # alive, but its heartbeat goes stale
        time.sleep(0.3)
        assert tracking.get_run(lake, run_id).status == "stale"
        with pytest.raises(tracking.RunStateError, match=f"pid {owner.pid} on this host"):
            tracking.resume_run(lake, run_id)
    finally:
        owner.kill()
        owner.wait(timeout=30)
    with tracking.resume_run(lake, run_id) as again:  # its process is gone now
        again.log_metric("x", 0.0, step=0)
    steps = tracking.get_metric_history(lake, run_id, "x").column("step").to_pylist()
    assert steps == [-1, 0]


def test_a_session_taken_over_by_a_resume_writes_nothing_more(lake: store.Lake) -> None:
    exp = lake.branch("exp", source="main")
    first = _start(lake, exp.name, "taken-over")
    first.log_metric("x", 1.0, step=1)
    first.flush()
    # As if ``first`` had been given up for dead: resumed in the same process (allowed there).
    second = tracking.resume_run(lake, first.id)
    first.log_metric("x", 2.0, step=2)
    first.set_tag("late", "yes")
    with pytest.raises(tracking.RunStateError, match="resumed by another session"):
        first.flush()
    with pytest.raises(tracking.RunStateError, match="resumed by another session"):
        first.end()
    second.log_metric("x", 3.0, step=3)
    second.end()
    assert tracking.get_metric_history(lake, first.id, "x").column("step").to_pylist() == [1, 3]
    assert tracking.sql(lake, "SELECT key FROM tags").num_rows == 0
    record = tracking.sql(lake, "SELECT status, sessions, pid FROM runs").to_pylist()
    assert record == [{"status": "finished", "sessions": 2, "pid": os.getpid()}]


def test_a_claim_left_by_a_crashed_resumer_names_its_remedy(lake: store.Lake) -> None:
    run = _start(lake, None, "claimed")
    run.log_metric("x", 1.0, step=1)
    run.end("failed")
    stale_claim = f"{CLAIM_TAG_PREFIX}{run.id}-2"
    lake.tag(stale_claim, run.run_branch)
    with pytest.raises(tracking.RunStateError, match=stale_claim):
        tracking.resume_run(lake, run.id)
    lake.delete_tag(stale_claim)
    with tracking.resume_run(lake, run.id) as again:
        again.log_metric("x", 2.0, step=2)
    assert tracking.get_metric_history(lake, run.id, "x").column("step").to_pylist() == [1, 2]
    assert lake.tags() == {}


def _one_file_project(tmp_path: Path, source: str) -> Path:
    """A project folder holding one file, train.py, with ``source``."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(source)
    return project


# -- what an empty run costs -----------------------------------------------------------------


def test_an_empty_run_makes_one_commit_on_its_branch_and_one_merge(
    lake: store.Lake, tmp_path: Path
) -> None:
    exp = lake.branch("exp", source="main")
    project = _one_file_project(tmp_path, "print('hi')\n")
    with tracking.start_run(
        lake, branch=exp.name, name="empty", code_dir=project, cache_dir=tmp_path / "cache"
    ) as run:
        # Started, not committed: the run's files wait on its branch.
        assert lake.resolve(run.run_branch) == run.input_commit
        assert tracking.get_run(lake, run.id).status == "running"
    events = tracking.sql(
        lake, "SELECT event, commit FROM commits WHERE run_id = ?", params=[run.id]
    ).to_pylist()
    assert sorted(e["event"] for e in events) == ["finished", "merge"]
    assert {"event": "finished", "commit": run.output_commit} in events
    assert lake.resolve(run.run_branch) == run.output_commit
    # Nothing a run records was given up.
    at_output = {o.path.rsplit("/", 1)[-1] for o in lake.list(run.output_commit, "_flowlake/")}
    assert {"run.parquet", "environment.parquet", "code.parquet", "heartbeat.json"} <= at_output
    assert tracking.sql(lake, "SELECT count(*) AS n FROM environment").column("n")[0].as_py() > 5
    assert tracking.sql(lake, "SELECT path FROM code").to_pylist() == [{"path": "train.py"}]


def test_runs_of_an_unchanged_project_store_one_code_and_one_environment_manifest(
    lake: store.Lake, tmp_path: Path
) -> None:
    exp = lake.branch("exp", source="main")
    project = _one_file_project(tmp_path, "print('hi')\n")
    (project / "util.py").write_text("X = 1\n")
    runs = []
    for name in ("first", "second"):
        with tracking.start_run(
            lake, branch=exp.name, name=name, code_dir=project, cache_dir=tmp_path / "cache"
        ) as run:
            runs.append(run)
    first, second = runs
    for file in (layout.CODE_FILE, layout.ENVIRONMENT_FILE):
        a = lake.stat(layout.run_file(first.id, file), first.output_commit or "")
        b = lake.stat(layout.run_file(second.id, file), second.output_commit or "")
        assert a.checksum == b.checksum  # one object, at two paths
    # Each run's rows carry its own id: in the live view, at the target and at the second
    # run's output (where both manifests are one object, at two paths).
    code = "SELECT run_id, path FROM code ORDER BY run_id, path"
    env = "SELECT run_id, count(*) AS n FROM environment GROUP BY run_id ORDER BY run_id"
    ids = sorted([first.id, second.id])
    expected = [{"run_id": r, "path": p} for r in ids for p in ("train.py", "util.py")]
    for refs in (None, [exp.name], [second.output_commit or ""]):
        assert tracking.sql(lake, code, refs=refs).to_pylist() == expected
        counts = tracking.sql(lake, env, refs=refs).to_pylist()
        assert [c["run_id"] for c in counts] == ids and counts[0]["n"] == counts[1]["n"] > 5
    one = "SELECT DISTINCT run_id FROM code WHERE run_id = ?"
    assert tracking.sql(lake, one, params=[second.id]).to_pylist() == [{"run_id": second.id}]


def test_manifests_written_with_a_run_id_column_read_as_before(
    lake: store.Lake, tmp_path: Path
) -> None:
    """Lakes written before the manifests lost their ``run_id`` column read the same."""
    exp = lake.branch("exp", source="main")
    project = _one_file_project(tmp_path, "print('hi')\n")
    with tracking.start_run(
        lake, branch=exp.name, name="new", code_dir=project, cache_dir=tmp_path / "cache"
    ) as run:
        pass
    code = "SELECT * EXCLUDE (commit) FROM code ORDER BY path"
    env = "SELECT * EXCLUDE (commit) FROM environment ORDER BY name"
    before = [tracking.sql(lake, q, refs=[exp.name]).to_pylist() for q in (code, env)]
    # Rewritten as the code before did: the run id first, the rows' columns after it.
    old_code = pa.schema([("run_id", pa.string()), *layout.CODE_SCHEMA])
    old_env = pa.schema([("run_id", pa.string()), *layout.ENVIRONMENT_SCHEMA])
    for file, schema in ((layout.CODE_FILE, old_code), (layout.ENVIRONMENT_FILE, old_env)):
        path = layout.run_file(run.id, file)
        rows = [{"run_id": run.id, **r} for r in exp.read_table(path).to_pylist()]
        exp.write_table(path, pa.Table.from_pylist(rows, schema=schema))
    exp.commit("as an older flowlake wrote them")
    after = [tracking.sql(lake, q, refs=[exp.name]).to_pylist() for q in (code, env)]
    assert after == before and before[0] and before[0][0]["run_id"] == run.id
    assert tracking.sql(lake, "SELECT * FROM problems", refs=[exp.name]).num_rows == 0


OUTPUT = "SELECT output_commit FROM runs"


def _outputs(lake: store.Lake, refs: list[str] | None = None) -> list[str | None]:
    return tracking.sql(lake, OUTPUT, refs=refs).column("output_commit").to_pylist()


def test_output_commit_is_the_commit_that_ended_the_run_wherever_its_record_is_read(
    lake: store.Lake,
) -> None:
    exp = lake.branch("exp", source="main")
    with _start(lake, exp.name, "first") as run:
        run.log_metric("m", 1.0)
    first = run.output_commit
    assert first is not None and first == lake.resolve(run.run_branch)
    lake.tag("after-first", exp.name)
    # Its own branch (the live view), the branch it merged into, a tag, the commit itself.
    for refs in (None, [exp.name], ["after-first"], [first]):
        assert _outputs(lake, refs) == [first], refs
    assert tracking.get_run(lake, run.id).output_commit == first
    with tracking.resume_run(lake, run.id) as again:
        again.log_metric("m", 2.0)
    second = again.output_commit
    assert second not in (None, first)
    assert _outputs(lake) == _outputs(lake, [exp.name]) == [second]
    assert tracking.get_run(lake, run.id).output_commit == second
    # History as of the tag still names the commit that ended the first session.
    assert _outputs(lake, ["after-first"]) == [first]
    # Without the run branch, the commits reachable from where the record is read tell.
    lake.delete_branch(run.run_branch)
    assert _outputs(lake, ["after-first"]) == [first]
    assert _outputs(lake) == _outputs(lake, [exp.name]) == [second]


def test_output_commit_named_by_a_record_of_an_older_lake_is_kept(lake: store.Lake) -> None:
    exp = lake.branch("exp", source="main")
    run = _start(lake, exp.name, "old", merge=False)
    run.end()
    # What a run's end wrote before: a second commit whose record names the output commit.
    branch = lake.get_branch(run.run_branch)
    path = f"_flowlake/runs/{run.id}/run.parquet"
    record = branch.read_table(path).to_pylist()
    assert record[0]["output_commit"] is None
    record[0]["output_commit"] = run.output_commit
    branch.write_table(path, pa.Table.from_pylist(record, schema=layout.RUN_SCHEMA))
    recorded = branch.commit(
        f"run {run.id} recorded", {"tracking.run_id": run.id, "tracking.event": "recorded"}
    )
    lake.merge(run.run_branch, into=exp.name)
    output = run.output_commit
    assert output is not None
    for refs in (None, [exp.name], [recorded.id], [output]):
        assert _outputs(lake, refs) == [output], refs
    assert tracking.get_run(lake, run.id).output_commit == run.output_commit


def test_an_unchanged_git_project_is_listed_again_without_looking_at_each_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / "train.py").write_text("print('train')\n")
    (project / "util.py").write_text("X = 1\n")
    for path in project.glob("*.py"):
        _age(path)  # settled files: their hashes are cached
    cache = str(tmp_path / "cache")
    first = snapshot.listing(project, cache_dir=cache)
    held = {f.sha256 for f in first.files}

    def refuse(*args: object) -> None:
        raise AssertionError("looked at each file of an unchanged project")

    with monkeypatch.context() as patched:
        patched.setattr(snapshot, "_read_files", refuse)
        again = snapshot.listing(project, cache_dir=cache, held=held)
    assert [(f.path, f.size, f.sha256) for f in again.files] == [
        (f.path, f.size, f.sha256) for f in first.files
    ]
    assert all(f.data is None for f in again.files)
    # What changed is seen, and bytes the caller lacks are read.
    (project / "util.py").write_text("X = 22\n")
    (project / "new.py").write_text("Y = 1\n")
    for path in (project / "util.py", project / "new.py"):
        _age(path, 1800)
    changed = {f.path: f for f in snapshot.listing(project, cache_dir=cache, held=held).files}
    assert sorted(changed) == ["new.py", "train.py", "util.py"]
    assert changed["util.py"].data == b"X = 22\n" and changed["new.py"].data == b"Y = 1\n"
    assert changed["util.py"].sha256 == hashlib.sha256(b"X = 22\n").hexdigest()
    assert changed["train.py"].data is None
    assert all(f.data is not None for f in snapshot.listing(project, cache_dir=cache).files)


def test_a_run_reads_and_writes_only_the_code_files_its_starting_commit_lacks(
    lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = lake.branch("exp", source="main")
    project = _one_file_project(tmp_path, "print('train')\n")
    (project / "util.py").write_text("X = 1\n")
    for path in project.iterdir():
        _age(path)  # settled files: their hashes are cached
    written: list[list[str]] = []
    opened: list[str] = []
    real = store.Lake.branch

    def spy(self: store.Lake, *args: Any, writes: Any = (), **kwargs: Any):  # type: ignore[no-untyped-def]
        # A run's start records are staged as its branch is created.
        written.append(sorted(p for p, _ in writes if p.startswith(layout.CODE_PREFIX)))
        return real(self, *args, writes=writes, **kwargs)

    def spy_open(path: str, *args: Any):  # type: ignore[no-untyped-def]
        opened.append(os.path.basename(path))
        return open(path, *args)  # noqa: SIM115

    monkeypatch.setattr(store.Lake, "branch", spy)
    monkeypatch.setattr(snapshot, "open", spy_open, raising=False)

    def run_once() -> tracking.Run:
        with tracking.start_run(
            lake, branch=exp.name, code_dir=project, cache_dir=tmp_path / "cache"
        ) as run:
            pass
        return run

    run_once()
    assert len(written[-1]) == 2  # nothing known yet: every file
    opened.clear()
    second = run_once()
    # The branch it started from holds them all: none is read, none written.
    assert written[-1] == [] and opened == []
    (project / "util.py").write_text("X = 2\n")
    _age(project / "util.py", 1800)
    opened.clear()
    run_once()
    assert written[-1] == [layout.code_blob(hashlib.sha256(b"X = 2\n").hexdigest())]
    assert opened == ["util.py"]
    # Nothing a run records was given up: every run lists every file, each readable.
    code = "SELECT path, sha256 FROM code WHERE run_id = ? ORDER BY path"
    rows = tracking.sql(lake, code, params=[second.id]).to_pylist()
    assert [r["path"] for r in rows] == ["train.py", "util.py"]
    as_second_saw = {"train.py": b"print('train')\n", "util.py": b"X = 1\n"}
    for row in rows:
        blob = layout.code_blob(row["sha256"])
        assert lake.read_bytes(blob, second.output_commit or "") == as_second_saw[row["path"]]
    # The target moved under the cache's feet: the next run writes every file again.
    exp.write_bytes("elsewhere.txt", b"x")
    exp.commit("someone else")
    run_once()
    assert len(written[-1]) == 2


def test_a_start_that_fails_leaves_no_git_command_of_its_snapshot_running(
    lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _one_file_project(tmp_path, "print('train')\n")
    _git(project, "init", "-q")
    started: list[subprocess.Popen[bytes]] = []
    real_spawn = snapshot._spawn

    def spawn(cwd: str, *args: str) -> subprocess.Popen[bytes] | None:
        proc = real_spawn(cwd, *args)
        if proc is not None:
            started.append(proc)
        return proc

    def refuse(*args: object, **kwargs: object) -> None:
        raise store.errors.StoreError("no room")

    monkeypatch.setattr(snapshot, "_spawn", spawn)
    # While git lists the code (the environment is read meanwhile) ...
    monkeypatch.setattr(environment, "capture", refuse)
    with pytest.raises(store.errors.StoreError, match="no room"):
        tracking.start_run(lake, code_dir=project, cache_dir=tmp_path / "cache")
    assert len(started) == 2 and all(p.returncode is not None for p in started)
    # ... and once it has (the run branch is created with the start records, last).
    monkeypatch.undo()
    monkeypatch.setattr(snapshot, "_spawn", spawn)
    monkeypatch.setattr(store.Lake, "branch", refuse)
    started.clear()
    with pytest.raises(store.errors.StoreError, match="no room"):
        tracking.start_run(lake, code_dir=project, cache_dir=tmp_path / "cache2")
    assert started and all(p.returncode is not None for p in started)
    assert not [name for name in lake.backend.list_branches() if "run-" in name]


def _dist_info(folder: Path, name: str, version: str) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_environment_listing_is_reused_until_a_distribution_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    listings = []
    real = importlib.metadata.distributions

    def counting() -> object:
        listings.append(1)
        return real()

    monkeypatch.setattr(importlib.metadata, "distributions", counting)
    cache = str(tmp_path / "cache")
    first = environment.capture(cache)
    assert environment.capture(cache) == first and len(listings) == 1
    (site / "unrelated.txt").write_text("a file coming and going changes nothing")
    assert environment.capture(cache).packages == first.packages and len(listings) == 1
    _dist_info(site, "flowlake_probe", "1.0")
    assert ("flowlake_probe", "1.0") in environment.capture(cache).packages
    assert len(listings) == 2
    shutil.rmtree(site / "flowlake_probe-1.0.dist-info")
    _dist_info(site, "flowlake_probe", "2.0")
    assert ("flowlake_probe", "2.0") in environment.capture(cache).packages
    assert environment.capture(None).packages == environment.capture(cache).packages
    shutil.rmtree(tmp_path / "cache")  # never the source of truth
    assert ("flowlake_probe", "2.0") in environment.capture(cache).packages


def test_environment_key_relists_a_settled_folder_only_when_its_names_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _dist_info(site, "flowlake_probe", "1.0")
    _age(site)
    monkeypatch.syspath_prepend(str(site))
    scans: list[str] = []
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        scans.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    first = environment._key()
    assert environment._key() == first and scans.count(str(site)) == 1
    _dist_info(site, "flowlake_probe_two", "1.0")  # the folder's time moves: listed again
    second = environment._key()
    assert second != first and scans.count(str(site)) == 2
    # Changed within the last seconds: listed every time until it settles.
    assert environment._key() == second and scans.count(str(site)) == 3
    _age(site)  # settled: listed once more, then reused
    assert environment._key() == second and environment._key() == second
    assert scans.count(str(site)) == 4


def test_local_cache_entries_are_decoded_once_and_read_again_when_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracking import localcache

    path = localcache.entry_path(str(tmp_path), "probe", "ab" * 32)
    decoded: list[int] = []
    real_loads = localcache.json.loads

    def loads(text: str) -> Any:
        decoded.append(1)
        return real_loads(text)

    monkeypatch.setattr(localcache.json, "loads", loads)
    assert localcache.load(path) is None
    localcache.store(path, {"blobs": ["a", "b"]})
    first = localcache.load(path)
    assert first == {"blobs": ["a", "b"]} and localcache.load(path) is first
    assert len(decoded) == 1
    # Same size, rewritten in place (not by rename), within the same clock tick: still seen.
    stat = os.stat(path)
    with open(path, "r+b") as f:
        rewritten = f.read().replace(b'"a"', b'"c"')
        f.seek(0)
        f.write(rewritten)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert localcache.load(path) == {"blobs": ["c", "b"]} and len(decoded) == 2
    localcache.store(path, {"blobs": ["d"]})
    assert localcache.load(path) == {"blobs": ["d"]}
    os.unlink(path)
    assert localcache.load(path) is None
    with open(path, "w") as f:
        f.write("{not json")
    assert localcache.load(path) is None


def test_an_unchanged_local_cache_entry_is_not_rewritten(tmp_path: Path) -> None:
    from tracking import localcache

    path = localcache.entry_path(str(tmp_path), "probe", "cd" * 32)
    localcache.store(path, {"blobs": ["a"]})
    inode = os.stat(path).st_ino
    localcache.store(path, {"blobs": ["a"]})
    assert os.stat(path).st_ino == inode  # not replaced: the same file
    localcache.store(path, {"blobs": ["b"]})
    assert os.stat(path).st_ino != inode and localcache.load(path) == {"blobs": ["b"]}
    # Written atomically under a temporary name; none is left behind.
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    # The cache folder deleted under a writer only costs the entry again.
    shutil.rmtree(tmp_path / "runs")
    localcache.store(path, {"blobs": ["c"]})
    assert localcache.load(path) == {"blobs": ["c"]}


def test_code_files_known_at_a_commit_are_one_entry_per_commit_and_the_old_one_goes(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    from tracking import localcache

    lake = embedded_lake
    exp = lake.branch("exp", source="main")
    project = _one_file_project(tmp_path, "print('train')\n")
    _age(project / "train.py")
    cache = tmp_path / "cache"
    folder = Path(localcache.entry_path(str(cache), "code-blobs", "0")).parent
    entries: list[list[str]] = []
    for _ in range(3):
        with tracking.start_run(lake, branch=exp.name, code_dir=project, cache_dir=cache):
            pass
        entries.append(sorted(os.listdir(folder)))
    # One entry, a new file each run (never renamed over the previous one), for the head.
    assert [len(e) for e in entries] == [1, 1, 1]
    assert len({e[0] for e in entries}) == 3
    held = localcache.load(str(folder / entries[-1][0]))
    assert held["commit"] == lake.resolve("exp")
    assert held["blobs"] == [hashlib.sha256(b"print('train')\n").hexdigest()]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def _age(path: Path, seconds: float = 3600) -> None:
    stamp = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(stamp, stamp))


def test_code_snapshot_reuses_hashes_and_git_status_of_unchanged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    files = {f"pkg/m{i}.py": f"x = {i}\n" for i in range(5)}
    for rel, text in files.items():
        (repo / rel).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    for path in repo.rglob("*.py"):
        _age(path)
    # An index written well after the files, as in a work tree edited a while ago (an index no
    # newer than its files makes git re-check them, and rewrite the index, on every status).
    _age(repo / ".git" / "index", 1800)
    hashed: list[int] = []
    statuses: list[int] = []
    real_sha, real_git = snapshot._sha256, snapshot._git

    def sha(data: bytes) -> str:
        hashed.append(len(data))
        return real_sha(data)

    def git(cwd: str, *args: str) -> str | None:
        statuses.extend([1] if args[0] == "status" else [])
        return real_git(cwd, *args)

    monkeypatch.setattr(snapshot, "_sha256", sha)
    monkeypatch.setattr(snapshot, "_git", git)
    cache = str(tmp_path / "cache")
    first = snapshot.capture(repo, cache_dir=cache)
    assert [f.path for f in first.files] == sorted(files) and first.git_dirty is False
    assert len(hashed) == 5 and len(statuses) == 1
    # git status may refresh its index; what it answers is kept once the index is settled.
    _age(repo / ".git" / "index", 1800)
    assert snapshot.capture(repo, cache_dir=cache) == first
    hashed.clear()
    statuses.clear()
    assert snapshot.capture(repo, cache_dir=cache) == first
    assert hashed == [] and statuses == []
    # An edit: that file alone is hashed again, and git is asked again.
    (repo / "pkg/m1.py").write_text("x = 'changed'\n")
    _age(repo / "pkg/m1.py", 2400)
    edited = snapshot.capture(repo, cache_dir=cache)
    assert edited.git_dirty is True and len(hashed) == 1 and len(statuses) == 1
    assert edited == snapshot.capture(repo)  # what the cache gives is what git and reading give
    # A file changed within the racy window is never taken from the cache.
    (repo / "pkg/m2.py").write_text("x = 'new'\n")
    hashed.clear()
    snapshot.capture(repo, cache_dir=cache)
    snapshot.capture(repo, cache_dir=cache)
    assert len(hashed) == 2


@pytest.mark.parametrize("in_git", [False, True], ids=["folder", "git-work-tree"])
def test_code_files_with_non_utf8_names_are_skipped_with_a_warning_not_a_crash(
    lake: store.Lake, tmp_path: Path, in_git: bool
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "good.py").write_text("x = 1\n")
    bad = os.path.join(os.fsencode(project), b"bad\xff.py")
    with open(bad, "w") as f:
        f.write("y = 2\n")
    with open(os.path.join(os.fsencode(project), b"data\xfe.bin"), "w") as f:
        f.write("not source\n")
    if in_git:
        _git(project, "init", "-q")
    with pytest.warns(tracking.errors.SkippedCodeFileWarning, match=r"bad\\udcff\.py"):
        captured = snapshot.capture(project)
    assert captured.skipped == ("'bad\\udcff.py'",)
    assert [f.path for f in captured.files] == ["good.py"]
    with pytest.warns(tracking.errors.SkippedCodeFileWarning):
        run = tracking.start_run(lake, name="odd-names", code_dir=project, cache_dir=tmp_path / "c")
    run.end()
    code = tracking.sql(lake, "SELECT path FROM code WHERE run_id = ?", params=[run.id])
    assert code.column("path").to_pylist() == ["good.py"]


_LEFT_OPEN = textwrap.dedent(
    """
    import sys, store, tracking
    lake = store.open(sys.argv[1])
    run = tracking.start_run(lake, branch=sys.argv[2], name="left-open", snapshot_code=False)
    for step in range(50):
        run.log_metric("loss", 1.0 / (step + 1), step=step)
    dep = tracking.deployment(lake, "production")
    dep.log_metric("accuracy", 0.5, segment="web")
    print(run.id, flush=True)
    # No run.end() and no dep.close(): both are flushed by their atexit hooks.
    """
)


def test_a_run_and_a_deployment_left_open_are_flushed_when_the_process_exits(
    lake: store.Lake, lake_location: str
) -> None:
    exp = lake.branch("exp", source="main")
    proc = subprocess.run(
        [sys.executable, "-c", _LEFT_OPEN, lake_location, exp.name],
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "Exception ignored" not in proc.stderr, proc.stderr
    run_id = proc.stdout.strip()
    assert tracking.get_run(lake, run_id).status == "finished"
    steps = tracking.get_metric_history(lake, run_id, "loss").column("step").to_pylist()
    assert steps == list(range(50))
    points = tracking.sql(lake, "SELECT key, value FROM deployment_metrics").to_pylist()
    assert points == [{"key": "accuracy", "value": 0.5}]


def test_a_runs_parquet_bytes_are_the_bytes_write_table_stores(embedded_lake: store.Lake) -> None:
    from tracking.run import parquet_bytes

    branch = embedded_lake.branch("tables")
    table = pa.table({"run_id": ["a", "b"], "value": [1.5, None], "n": [1, 2]})
    branch.write_table("t.parquet", table)
    assert branch.read_bytes("t.parquet") == parquet_bytes(table)
    assert branch.read_table("t.parquet").equals(table)


def test_the_code_manifest_is_the_parquet_of_its_rows(tmp_path: Path) -> None:
    from tracking import lifecycle
    from tracking.run import parquet_bytes

    files = tuple(
        snapshot.ListedFile(f"pkg/m{i}.py", i, hashlib.sha256(bytes([i])).hexdigest(), None)
        for i in range(5)
    ) + (snapshot.ListedFile("ä/ü.py", 3, "0" * 64, b"abc"),)
    code = snapshot.CodeListing(str(tmp_path), None, None, files, False)
    items = dict(lifecycle._code_items("f" * 32, code, frozenset()))
    rows = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files]
    expected = parquet_bytes(pa.Table.from_pylist(rows, schema=layout.CODE_SCHEMA))
    assert items[layout.run_file("f" * 32, layout.CODE_FILE)] == expected
    # The same bytes for another run: the manifest names no run.
    again = dict(lifecycle._code_items("e" * 32, code, frozenset()))
    assert again[layout.run_file("e" * 32, layout.CODE_FILE)] == expected
    assert items[layout.code_blob("0" * 64)] == b"abc"  # the one file whose bytes were read
    assert len(items) == 2


def test_the_open_runs_of_a_process_are_flushed_by_one_shared_thread(
    embedded_lake: store.Lake,
) -> None:
    import threading

    exp = embedded_lake.branch("exp")
    runs = [
        tracking.start_run(embedded_lake, branch=exp.name, snapshot_code=False, flush_interval=0.1)
        for _ in range(3)
    ]
    try:
        for step, run in enumerate(runs):
            run.log_metric("x", float(step), step=step)
        from tracking import buffer

        ticker = buffer._TICKER._thread
        flushers = [t for t in threading.enumerate() if t.name.startswith("flowlake-flusher")]
        for old in (t for t in flushers if t is not ticker):
            old.join(timeout=10)  # an earlier test's ticker that had just idled out, ending
        assert ticker is not None and ticker.is_alive()
        assert [t for t in threading.enumerate() if t.name.startswith("flowlake-flusher")] == [
            ticker
        ]
        deadline = time.monotonic() + 30
        while True:  # each run's point reaches its branch without end(): the thread flushed it
            flushed = [
                tracking.get_metric_history(embedded_lake, run.id, "x").column("step").to_pylist()
                for run in runs
            ]
            if flushed == [[0], [1], [2]] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert flushed == [[0], [1], [2]]
    finally:
        for run in runs:
            run.end()
    assert tracking.sql(
        embedded_lake, "SELECT count(*) AS n FROM runs WHERE status = 'finished'"
    ).column("n").to_pylist() == [3]


_DIES = textwrap.dedent(
    """
    import sys, store, tracking
    lake = store.open(sys.argv[1])
    run = tracking.start_run(lake, branch=sys.argv[2], name="dies", snapshot_code=False)
    run.log_metric("loss", 0.5, step=0)
    print(run.id, flush=True)
    raise KeyboardInterrupt if sys.argv[3] == "ctrl-c" else ValueError("boom")
    """
)


@pytest.mark.parametrize(
    ("how", "status", "error"),
    [("raise", "failed", "ValueError: boom"), ("ctrl-c", "killed", "KeyboardInterrupt")],
)
def test_a_run_left_open_by_a_script_that_dies_of_an_exception_is_not_merged_as_finished(
    embedded_lake: store.Lake, how: str, status: str, error: str
) -> None:
    exp = embedded_lake.branch("exp", source="main")
    before = exp.head().id
    proc = subprocess.run(
        [sys.executable, "-c", _DIES, str(embedded_lake.location), exp.name, how],
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "Exception ignored" not in proc.stderr, proc.stderr
    record = tracking.get_run(embedded_lake, proc.stdout.strip())
    assert (record.status, record.error) == (status, error)
    assert embedded_lake.resolve(exp.name) == before  # nothing merged
    steps = tracking.get_metric_history(embedded_lake, record.run_id, "loss")
    assert steps.column("step").to_pylist() == [0]
