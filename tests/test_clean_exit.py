"""A process that reads flowlake tables and exits at once exits cleanly (status 0).

An Arrow worker thread may drop the last reference to a buffer that wraps Python ``bytes``
after the read returned (the dataset scanner behind ``pq.read_table`` does, and so does a
threaded ``ParquetFile`` read of such a buffer); when the interpreter is already exiting,
releasing it needs the GIL, Python ends the thread, and the process aborts ("terminate called
without an active exception", apache/arrow#34314; seen in a core dump). It struck about one
process in fifteen that read a table as its last act, such as a refused ``resume_run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

import store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Enough exits that the fault (about 6% of them before the fix) shows with 95% probability.
EXITS = 48

_READ_AND_EXIT = textwrap.dedent(
    """
    import sys, store
    store.open(sys.argv[1], "user:tester").read_table("t.parquet", ref="exp", columns=["a"])
    sys.exit(0)
    """
)

_EVERY_READ = textwrap.dedent(
    """
    import sys, store, tracking
    lake = store.open(sys.argv[1], "user:tester")
    lake.read_table("t.parquet", ref="exp")
    with tracking.start_run(lake, branch="exp", name="r", snapshot_code=False) as run:
        run.log_metric("x", 1.0, step=1)
    tracking.get_metric_history(lake, run.id, "x")
    tracking.get_run(lake, run.id)
    tracking.search_runs(lake)
    tracking.sql(lake, "SELECT count(*) FROM metrics")
    print("pyarrow.dataset" in sys.modules)
    """
)


def _lake_with_a_table(location: str) -> None:
    lake = store.open(location, "user:tester")
    exp = lake.branch("exp", source="main")
    exp.write_table("t.parquet", pa.table({"a": list(range(1000)), "s": ["x"] * 1000}))
    exp.commit("a table")
    lake.close()


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
        timeout=120,
    )


def test_processes_that_exit_right_after_reading_a_table_all_exit_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    location = str(tmp_path / "lake")
    _lake_with_a_table(location)
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: _python(_READ_AND_EXIT, location), range(EXITS)))
    failed = [(p.returncode, p.stderr[-300:]) for p in done if p.returncode != 0]
    assert not failed, f"{len(failed)} of {EXITS} readers did not exit cleanly: {failed[:3]}"


def test_flowlakes_reads_never_start_arrows_dataset_scanner(tmp_path) -> None:  # type: ignore[no-untyped-def]
    location = str(tmp_path / "lake")
    _lake_with_a_table(location)
    done = _python(_EVERY_READ, location)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"], "a read went through pyarrow.dataset"


def test_reading_columns_a_table_lacks_names_them(embedded_lake: store.Lake) -> None:
    exp = embedded_lake.branch("exp", source="main")
    exp.write_table("t.parquet", pa.table({"a": [1], "b": [2]}))
    assert exp.read_table("t.parquet", columns=["b", "a"]).column_names == ["b", "a"]
    with pytest.raises(store.InvalidArgumentError, match=r"no column 'nope'.*\['a', 'b'\]"):
        exp.read_table("t.parquet", columns=["a", "nope"])
