"""Every dashboard page through ``streamlit.testing.v1.AppTest``: on a missing lake, an empty
lake and a lake built here, with the numbers shown equal to ``tracking.compare``'s."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from extras import import_extra

import store
import tracking

AppTest = import_extra("streamlit.testing.v1", "ui").AppTest

APP = str(Path(__file__).resolve().parents[1] / "ui" / "app.py")
PAGES = ["Compare", "Branches", "Runs", "Diff"]
T0 = datetime.now(UTC) - timedelta(days=5)


def app_on(location: Path | None, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    if location is None:
        monkeypatch.delenv("FLOWLAKE_LAKE", raising=False)
    else:
        monkeypatch.setenv("FLOWLAKE_LAKE", str(location))
    return AppTest.from_file(APP, default_timeout=60)


@pytest.fixture
def built_lake(tmp_path: Path) -> Path:
    return build_lake(tmp_path / "lake")


def build_lake(path: Path) -> Path:
    """A lake with a run, a changed table on a branch, and a deployment with outcomes."""
    lake = store.open(path)
    main = lake.get_branch("main")
    with main.transact("table v1") as tx:
        tx.write_table("tables/users.parquet", pa.table({"id": [1, 2, 3], "score": [1, 2, 3]}))
    branch = lake.branch("exp")
    branch.write_table("tables/users.parquet", pa.table({"id": [2, 3, 4], "score": [2, 9, 4]}))
    branch.write_bytes("models/clf/model.pkl", b"v2")
    branch.commit("new table and model")
    with tracking.start_run(lake, branch="exp", name="lr=0.1", snapshot_code=False) as run:
        run.log_param("lr", 0.1)
        for step in range(5):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
    dep = tracking.deploy(lake, "cand", branch="exp", model="models/clf", deployed_at=T0)
    prod = tracking.deployment(lake, "production")
    rng = np.random.default_rng(0)
    for i in range(240):
        stamp = T0 + timedelta(hours=i / 2)
        seg = ("mobile", "web")[i % 2]
        prod.log_metric("accuracy", float(rng.random() < 0.7), timestamp=stamp, segment=seg)
        dep.log_metric("accuracy", float(rng.random() < 0.9), timestamp=stamp, segment=seg)
    dep.close()
    prod.close()
    lake.close()
    return path


def test_missing_lake_shows_the_start_page(monkeypatch: pytest.MonkeyPatch) -> None:
    at = app_on(None, monkeypatch).run()
    assert not at.exception
    assert "FLOWLAKE_LAKE" in at.info[0].value


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_an_empty_lake_shows_help_not_a_traceback(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.open(tmp_path / "lake").close()
    at = app_on(tmp_path / "lake", monkeypatch).run()
    at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, at.exception


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_a_built_lake(
    page: str, built_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = app_on(built_lake, monkeypatch).run()
    at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, at.exception
    if page == "Diff":
        at.text_input[0].set_value("main").run()
        at.text_input[1].set_value("exp").run()
        assert not at.exception, at.exception
        at.selectbox[0].set_value("tables/users.parquet").run()
        at.selectbox[1].set_value("id").run()
        assert not at.exception, at.exception
        shown = [json.loads(m.value) for m in at.json]
        # ids 2,3 kept (3's score changed), 1 removed, 4 added: what DuckDB found
        assert {"added rows": 1, "removed rows": 1, "changed rows": 1} in shown


def test_compare_page_shows_tracking_compare_numbers_and_promotes(
    built_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = app_on(built_lake, monkeypatch).run()
    assert not at.exception, at.exception
    expected = tracking.compare(store.open(built_lake), "cand")
    shown = at.dataframe[0].value
    overall = shown[shown["segment"] == "all"].iloc[0]
    row = expected.metrics[0]
    assert overall["difference"] == pytest.approx(row.difference)
    assert (overall["low"], overall["high"]) == pytest.approx((row.low, row.high))
    assert overall["adjusted p"] == pytest.approx(row.adjusted_p)
    assert overall["verdict"] == "better"
    assert any("accuracy**: :green[better]" in m.value for m in at.markdown)
    assert any("sequential" in c.value for c in at.caption)
    before = store.open(built_lake).resolve("main")
    at.button(key="promote").click().run()
    assert "Gate open" in at.success[0].value
    at.button(key="confirm").click().run()
    assert not at.exception, at.exception
    after = store.open(built_lake).resolve("main")
    assert after != before and after[:12] in at.success[-1].value


def test_compare_page_on_every_backend(
    lake: store.Lake, lake_access: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard opens the lake from configuration (lakeFS through ``LAKECTL_*``, S3
    objects through fsspec's configuration) and shows what ``tracking.compare`` computes."""
    branch = lake.branch("exp")
    branch.write_bytes("models/clf/model.pkl", b"v2")
    branch.commit("model")
    dep = tracking.deploy(lake, "cand", branch="exp", deployed_at=T0)
    prod = tracking.deployment(lake, "production")
    for i in range(80):
        stamp = T0 + timedelta(hours=i)
        prod.log_metric("error_rate", 0.2 + 0.01 * (i % 5), timestamp=stamp)
        dep.log_metric("error_rate", 0.1 + 0.01 * (i % 5), timestamp=stamp)
    dep.close()
    prod.close()
    at = app_on(Path(lake.location) if "://" not in lake.location else None, monkeypatch)
    monkeypatch.setenv("FLOWLAKE_LAKE", lake.location)
    at.run()
    assert not at.exception, at.exception
    shown = at.dataframe[0].value.iloc[0]
    expected = tracking.compare(lake, "cand").metrics[0]
    assert shown["difference"] == pytest.approx(expected.difference)
    assert shown["verdict"] == expected.verdict == "better"  # lower error is better
