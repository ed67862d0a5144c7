"""An embedded lake folder is self-contained: moved it reads, copied it is independent, and a
lake whose objects live elsewhere knows it (gc there needs the caller's word)."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest

import store
from store import errors


def age_objects(lake_path: Path, hours: float = 7) -> None:
    old = time.time() - hours * 3600
    for folder, _, files in os.walk(lake_path / "objects"):
        for name in files:
            os.utime(os.path.join(folder, name), (old, old))


def make_lake(path: Path, payload: bytes) -> str:
    lake = store.open(path)
    branch = lake.branch("exp")
    branch.write_bytes("model.bin", payload)
    branch.commit("v1")
    lake.close()
    return branch.name


def test_the_default_object_location_is_recorded_relative_to_the_lake(tmp_path: Path) -> None:
    make_lake(tmp_path / "lake", b"x" * 20_000)
    config = json.loads((tmp_path / "lake" / "flowlake.json").read_text())
    assert config["objects"] == "objects"


def test_a_moved_lake_reads_everything_and_leaves_no_trace_behind(tmp_path: Path) -> None:
    payload = os.urandom(100_000)
    name = make_lake(tmp_path / "lake", payload)
    shutil.move(tmp_path / "lake", tmp_path / "moved")
    lake = store.open(tmp_path / "moved")
    assert lake.read_bytes("model.bin", ref=name) == payload
    assert lake.fsck() == []
    lake.close()
    assert not (tmp_path / "lake").exists()


def test_gc_in_a_copied_lake_never_touches_the_original(tmp_path: Path) -> None:
    v1, v2 = os.urandom(100_000), os.urandom(100_000)
    name = make_lake(tmp_path / "orig", v1)
    shutil.copytree(tmp_path / "orig", tmp_path / "backup")
    lake = store.open(tmp_path / "orig")
    lake.get_branch(name).write_bytes("model.bin", v2)
    lake.get_branch(name).commit("v2 after the backup")
    lake.close()
    for path in (tmp_path / "orig", tmp_path / "backup"):
        age_objects(path)
    backup = store.open(tmp_path / "backup")
    backup.gc(timedelta(hours=6))
    assert backup.read_bytes("model.bin", ref=name) == v1
    backup.close()
    lake = store.open(tmp_path / "orig")
    assert lake.read_bytes("model.bin", ref=name) == v2
    assert lake.fsck() == []
    lake.close()


@pytest.mark.parametrize("moved", [False, True], ids=["in-place", "moved"])
def test_lakes_that_recorded_an_absolute_own_location_open_and_migrate(
    tmp_path: Path, moved: bool
) -> None:
    payload = os.urandom(50_000)
    name = make_lake(tmp_path / "lake", payload)
    config = tmp_path / "lake" / "flowlake.json"
    config.write_text(json.dumps({"format": 1, "objects": str(tmp_path / "lake" / "objects")}))
    where = tmp_path / "lake"
    if moved:
        where = tmp_path / "elsewhere"
        shutil.move(tmp_path / "lake", where)
    lake = store.open(where)
    assert lake.read_bytes("model.bin", ref=name) == payload
    assert lake.backend.objects_external is False
    lake.close()
    assert json.loads((where / "flowlake.json").read_text())["objects"] == "objects"


def test_an_explicit_object_location_is_external_and_gc_there_needs_consent(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-objects"
    lake = store.open(tmp_path / "a", objects=str(shared))
    assert lake.backend.objects_external is True
    branch = lake.branch("exp")
    branch.write_bytes("m.bin", os.urandom(50_000))
    branch.commit("m")
    with pytest.raises(errors.SharedObjectsError, match="exclusive_objects=True"):
        lake.gc(timedelta(0))
    assert lake.gc(timedelta(0), exclusive_objects=True) >= 0
    assert lake.fsck() == []
    lake.close()
    # The same location given again (absolute or as recorded) opens; another one is refused.
    store.open(tmp_path / "a", objects=str(shared)).close()
    with pytest.raises(errors.InvalidArgumentError):
        store.open(tmp_path / "a", objects=str(tmp_path / "other"))


def test_an_external_local_location_that_vanished_is_an_error_not_an_empty_store(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-objects"
    store.open(tmp_path / "a", objects=str(shared)).close()
    shutil.move(shared, tmp_path / "renamed")
    with pytest.raises(errors.InvalidArgumentError, match="does not exist"):
        store.open(tmp_path / "a")
    assert not shared.exists()


def test_an_unreadable_configuration_is_a_clear_error(tmp_path: Path) -> None:
    make_lake(tmp_path / "lake", b"x")
    (tmp_path / "lake" / "flowlake.json").write_text("{not json")
    with pytest.raises(errors.InvalidArgumentError, match="flowlake.json"):
        store.open(tmp_path / "lake")


def test_flowlake_gc_on_external_objects_says_why_and_how_to_override(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    store.open(tmp_path / "a", objects=str(tmp_path / "shared-objects")).close()
    lake_args = ["--lake", str(tmp_path / "a")]
    refused = CliRunner().invoke(app, ["gc", "--retention", "0", *lake_args])
    assert refused.exit_code == 1
    assert "other lakes" in refused.output and "--exclusive-objects" in refused.output
    allowed = CliRunner().invoke(app, ["gc", "--exclusive-objects", *lake_args])
    assert allowed.exit_code == 0, allowed.output
