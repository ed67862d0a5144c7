"""Faults found by using deployments, comparisons and promotion as a platform team would (each
test names the behaviour a user or a CI script relies on)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

import store
import tracking
from ui.cli import app

T0 = datetime.now(UTC) - timedelta(days=3)


def live_lake(path: Path, candidate: float = 0.9, production: float = 0.9, n: int = 60) -> Path:
    """A lake with deployment ``cand`` live next to production, ``n`` accuracy points a side
    (a share ``candidate`` / ``production`` of them 1.0)."""
    lake = store.open(path)
    branch = lake.branch("cand")
    branch.write_bytes("model.bin", b"v2")
    branch.commit("train")
    dep = tracking.deploy(lake, "cand", branch=branch.name, model="model.bin", deployed_at=T0)
    prod = tracking.deployment(lake, "production")
    for i in range(n):
        stamp = T0 + timedelta(minutes=i)
        dep.log_metric("accuracy", float(i < candidate * n), timestamp=stamp)
        prod.log_metric("accuracy", float(i < production * n), timestamp=stamp)
    dep.close()
    prod.close()
    lake.close()
    return path


def test_promote_json_with_a_closed_gate_prints_json_and_exits_1(tmp_path: Path) -> None:
    path = live_lake(tmp_path / "lake", candidate=0.5, production=0.95)
    main = store.open(path).resolve("main")
    result = CliRunner().invoke(
        app, ["promote", "cand", "--yes", "--json", "--lake", str(path)], catch_exceptions=False
    )
    assert result.exit_code == 1
    refused = json.loads(result.stdout)
    assert refused["promoted"] is False and refused["merge_commit"] is None
    assert refused["gate"]["open"] is False
    assert any("accuracy is worse" in reason for reason in refused["gate"]["reasons"])
    assert store.open(path).resolve("main") == main


def test_promote_json_when_promoted_says_so(tmp_path: Path) -> None:
    path = live_lake(tmp_path / "lake")
    result = CliRunner().invoke(app, ["promote", "cand", "--yes", "--json", "--lake", str(path)])
    assert result.exit_code == 0, result.output
    promoted = json.loads(result.stdout)
    assert promoted["promoted"] is True and promoted["gate"]["open"] is True
    assert promoted["merge_commit"] == store.open(path).resolve("main")
