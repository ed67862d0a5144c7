"""``flowlake deploy / deployments / compare / promote / undeploy`` on an embedded lake."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import store
import tracking
from ui import render
from ui.cli import app

T0 = datetime.now(UTC) - timedelta(days=6)
APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    """A lake with a candidate branch deployed and five days of outcomes on both sides."""
    path = tmp_path / "lake"
    lake = store.open(path)
    branch = lake.branch("a-rather-long-candidate-branch-name")
    branch.write_bytes("models/clf/model.pkl", b"v2")
    branch.commit("train")
    dep = tracking.deploy(lake, "cand", branch=branch.name, model="models/clf", deployed_at=T0)
    prod = tracking.deployment(lake, "production")
    rng = np.random.default_rng(0)
    for i in range(300):
        stamp = T0 + timedelta(hours=i / 3)
        seg = ("mobile", "web")[i % 2]
        prod.log_metric("accuracy", float(rng.random() < 0.75), timestamp=stamp, segment=seg)
        dep.log_metric("accuracy", float(rng.random() < 0.92), timestamp=stamp, segment=seg)
    dep.close()
    prod.close()
    lake.close()
    return path


def run_cli(lake_dir: Path, *args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(
        app, [*args, "--lake", str(lake_dir)], input=stdin, env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_tables_fit_80_columns_with_short_ids_and_unsplit_times(lake_dir: Path) -> None:
    listing = run_cli(lake_dir, "deployments")
    compared = run_cli(lake_dir, "compare", "cand")
    for text in (listing, compared):
        assert max(len(line) for line in text.splitlines()) <= 80
    commit = tracking.deployment(store.open(lake_dir), "cand").commit
    assert commit[:12] in listing and commit not in listing
    assert T0.strftime("%Y-%m-%d %H:%M") in listing
    assert "…" in listing  # the long branch name is cut, not wrapped
    assert "better" in compared and "sequential" in compared


def test_deployments_and_compare_at_80_columns_cut_no_time_number_or_verdict_word(
    lake_dir: Path,
) -> None:
    from dataclasses import replace
    from io import StringIO

    from rich.console import Console

    from ui.cli_deploy import comparison_table, interval, num, pvalue

    lake = store.open(lake_dir)
    tracking.deploy(lake, "avery-logistic-regression", branch="a-rather-long-candidate-branch-name")
    tracking.promote(lake, "cand", force=True)
    listing = run_cli(lake_dir, "deployments")
    assert max(len(line) for line in listing.splitlines()) <= 80
    for record in tracking.deployments(lake):
        assert record.commit[:12] in listing and record.status in listing
        if record.deployed_at is not None:
            assert f"{record.deployed_at:%Y-%m-%d %H:%M}" in listing, listing
    base = tracking.compare(lake, "avery-logistic-regression", baseline="cand").metrics[0]
    rows = [
        replace(base, metric="malignant_miss", segment=s, verdict="not significant")
        for s in ("large", "small")
    ]
    out = Console(width=80, file=StringIO(), color_system=None)
    out.print(comparison_table(rows, "by segment", 80))
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert max(len(line) for line in text.splitlines()) <= 80
    for row in rows:
        cells = (num(row.baseline), num(row.candidate), interval(row), pvalue(row.adjusted_p))
        assert all(cell in text for cell in cells), text
        assert f"malignant_miss/{row.segment}" in text, text
    assert {"not", "significant"} <= set(text.split()), text


def test_json_outputs_equal_the_python_api(lake_dir: Path) -> None:
    listed = json.loads(run_cli(lake_dir, "deployments", "--json"))
    assert [d["name"] for d in listed] == ["production", "cand"]
    compared = json.loads(run_cli(lake_dir, "compare", "cand", "--json"))
    direct = tracking.compare(store.open(lake_dir), "cand").to_dict()
    assert compared["metrics"] == direct["metrics"]
    assert compared["metrics"][0]["verdict"] == "better"


def test_promote_asks_then_moves_main(lake_dir: Path) -> None:
    before = store.open(lake_dir).resolve("main")
    refused = CliRunner().invoke(app, ["promote", "cand", "--lake", str(lake_dir)], input="n\n")
    assert refused.exit_code == 1 and "gate open" in refused.output
    assert store.open(lake_dir).resolve("main") == before
    out = run_cli(lake_dir, "promote", "cand", stdin="y\n")
    assert "promoted cand" in out
    assert store.open(lake_dir).resolve("main") != before


@pytest.mark.parametrize("name", ["cand", "production"])
def test_promote_of_a_deployment_not_live_is_refused_before_comparing_or_asking(
    lake_dir: Path, name: str
) -> None:
    if name == "cand":
        run_cli(lake_dir, "promote", "cand", "--yes")
    main = store.open(lake_dir).resolve("main")
    said = "is promoted, not live" if name == "cand" else "production is main already"
    for extra in ([], ["--yes"], ["--json", "--yes"]):
        result = CliRunner().invoke(
            app, ["promote", name, *extra, "--lake", str(lake_dir)], input="y\n"
        )
        assert result.exit_code == 1 and said in result.output
        assert "gate" not in result.output and "merge" not in result.output
        assert store.open(lake_dir).resolve("main") == main


def test_promote_json_without_yes_is_a_usage_error_and_changes_nothing(lake_dir: Path) -> None:
    before = store.open(lake_dir).resolve("main")
    result = CliRunner().invoke(app, ["promote", "cand", "--json", "--lake", str(lake_dir)])
    assert result.exit_code == 2 and "--yes" in result.stderr
    assert "Aborted" not in result.output and result.stdout == ""
    assert store.open(lake_dir).resolve("main") == before
    promoted = json.loads(run_cli(lake_dir, "promote", "cand", "--json", "--yes"))
    assert promoted["merge_commit"] == store.open(lake_dir).resolve("main") != before


def test_ui_without_streamlit_names_the_extra_before_announcing_a_url(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "streamlit" else real_find_spec(name, *a),
    )
    result = CliRunner().invoke(app, ["ui", "--lake", str(lake_dir)])
    assert result.exit_code == 1
    assert "pip install 'flowlake[ui]'" in result.stderr and "http://" not in result.output


def test_deploy_and_undeploy_commands(lake_dir: Path) -> None:
    assert "deployed" in run_cli(
        lake_dir, "deploy", "second", "--branch", "a-rather-long-candidate-branch-name"
    )
    assert "retired second" in run_cli(lake_dir, "undeploy", "second")
    bad = CliRunner().invoke(app, ["deploy", "x", "--branch", "nope", "--lake", str(lake_dir)])
    assert bad.exit_code == 1 and "nope" in bad.output


def test_demo_ends_with_candidates_compared_live_and_the_winner_promoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sklearn")
    path = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--path", str(path)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "compare avery-logistic-regression --lake" in out
    assert "always-valid sequential intervals" in out and "gate open" in out
    assert f"ui --lake {path}" in out.replace("\n", "")
    with store.open(path) as lake:
        records = {r.name: r for r in tracking.deployments(lake)}
        promoted = [r for r in records.values() if r.status == "promoted"]
        assert len(records) == 3 and len(promoted) == 1
        assert promoted[0].merge_commit == lake.resolve("main")
        days = tracking.sql(
            lake,
            "SELECT deployment, count(DISTINCT CAST(timestamp AS DATE)) AS days, "
            "count(DISTINCT segment) AS segments FROM deployment_metrics GROUP BY ALL",
        ).to_pylist()
    # 14 simulated days each; production and the loser also score traffic after the promotion,
    # stamped as it arrives (today), which is what the loser's later gate is held to.
    winner = promoted[0].name
    assert len(days) == 3 and {d["segments"] for d in days} == {2}
    assert {d["deployment"]: d["days"] for d in days if d["deployment"] == winner} == {winner: 14}
    assert all(d["days"] > 14 for d in days if d["deployment"] != winner)

    # every dashboard page on the demo lake (its Compare numbers are checked in test_dashboard)
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FLOWLAKE_LAKE", str(path))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    for page in ("Compare", "Branches", "Runs", "Diff"):
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, (page, at.exception)


def test_runs_table_fits_80_columns_with_unsplit_times(lake_dir: Path) -> None:
    with (
        store.open(lake_dir) as lake,
        tracking.start_run(
            lake,
            branch="a-rather-long-candidate-branch-name",
            name="gradient-boosting(max_depth=7, n_estimators=500, learning_rate=0.05)",
            snapshot_code=False,
        ) as run,
    ):
        run.log_metric("loss", 0.5)
    out = run_cli(lake_dir, "runs")
    assert max(len(line) for line in out.splitlines()) <= 80
    (line,) = [line for line in out.splitlines() if run.id[:8] in line]
    assert run.id not in out and "gradient-boo" in line and "…" in line
    assert run.start_time.strftime("%Y-%m-%d %H:%M") in line


def test_runs_json_is_one_document_with_every_column_in_full(lake_dir: Path) -> None:
    with (
        store.open(lake_dir) as lake,
        tracking.start_run(
            lake,
            branch="a-rather-long-candidate-branch-name",
            name="a-long-run-name",
            snapshot_code=False,
        ) as run,
    ):
        run.log_metric("loss", 0.5)
    listed = json.loads(run_cli(lake_dir, "runs", "--json"))
    (row,) = [r for r in listed if r["run_id"] == run.id]
    assert row["name"] == "a-long-run-name" and row["status"] == "finished"
    assert row["target_branch"] == "user:tester/a-rather-long-candidate-branch-name"
    assert row["start_time"] == render.iso(run.start_time)


@pytest.mark.parametrize("page", ["README.md", "docs/deployments.md"])
def test_the_documented_deployment_example_promotes_in_one_process(
    page: str, tmp_path: Path
) -> None:
    text = (APP.parents[1] / page).read_text()
    (example,) = [
        block.split("\n", 1)[1].split("```", 1)[0]
        for block in text.split("```python")[1:]
        if "tracking.deploy(" in block.split("```", 1)[0]
    ]
    with store.open(tmp_path / "lake") as lake:
        branch = lake.branch("lr-sweep")
        branch.write_bytes("models/classifier/model.pkl", b"v2")
        branch.commit("train")
        exec(compile(example, page, "exec"), {"lake": lake, "tracking": tracking})
        assert {r.status for r in tracking.deployments(lake)} >= {"promoted"}


def test_compare_of_a_deployment_that_logged_nothing_yet_says_so(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    with store.open(path) as lake:
        branch = lake.branch("quiet")
        branch.write_bytes("models/clf/model.pkl", b"v2")
        branch.commit("train")
        tracking.deploy(lake, "quiet", branch=branch.name, model="models/clf").close()
    out = run_cli(path, "compare", "quiet")
    assert "no metric was logged by both sides" in out and "verdict" not in out
