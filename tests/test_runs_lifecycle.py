"""Run lifecycle: metric points checked at the call, tables kept as pandas keeps them, one
session per run at a time, and what an empty run costs in commits and repeated work.
"""

from __future__ import annotations

import io
import math
import time

import numpy as np
import pandas as pd
import pytest

import store
import tracking
from tracking import points


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
        ("other", 5),
    ]
    values = [r["value"] for r in rows]
    assert values[:2] == [1.0, 2.0] and math.isnan(values[2])
    assert values[3:] == [math.inf, -math.inf, 0.25]
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
