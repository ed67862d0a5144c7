"""The CLI as a newcomer meets it: clear one-line errors, whole ids, pasteable commands."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import store
from ui.cli import app


@pytest.mark.parametrize("command", ["status", "install"])
def test_gate_hook_on_an_embedded_lake_says_it_is_not_lakefs_even_without_lakefs_sdk(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.open(tmp_path / "lake").close()
    monkeypatch.setitem(sys.modules, "lakefs_sdk", None)  # as if the lakefs extra were missing
    monkeypatch.delitem(sys.modules, "store.backends.lakefs.gatehook", raising=False)
    result = CliRunner().invoke(app, ["gate-hook", command, "--lake", str(tmp_path / "lake")])
    assert result.exit_code == 1
    assert "is not a lakeFS lake" in result.output
    assert "Traceback" not in result.output and "lakefs_sdk" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message, however it wraps
