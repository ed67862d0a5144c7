"""An embedded lake folder is self-contained: moved it reads, copied it is independent, and a
lake whose objects live elsewhere knows it (gc there needs the caller's word)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest

import store
from store import errors
from store.folders import SkippedPathsWarning


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


# -- a lake folder is never data: exports never write into one, imports never read one ----------


def lake_files(lake_path: Path) -> set[str]:
    """The names of every file in a lake folder (its own files, objects included)."""
    return {p.relative_to(lake_path).as_posix() for p in lake_path.rglob("*") if p.is_file()}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the working directory) with data and an embedded lake at ./lake whose
    branch ``exp`` holds objects named like a lake's own files (``y/flowlake.json``,
    ``y/refs.db``) and an object ``lake/refs.db``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "flowlake.json").write_bytes(b"{}")  # a data file, not a lake
    (tmp_path / "data" / "train.csv").write_bytes(b"a,b\n1,2\n")
    lake = store.open(tmp_path / "lake")
    branch = lake.branch("exp")
    branch.write_many(
        [
            ("y/flowlake.json", b"not a configuration"),
            ("y/refs.db", b"not a refs database"),
            ("lake/refs.db", b"not a refs database either"),
        ]
    )
    branch.commit("objects named like a lake's files")
    lake.close()
    return tmp_path


def assert_lake_intact(lake_path: Path, files_before: set[str], committed: bool = False) -> None:
    """The lake opens, keeps its branch and history, fsck is clean and no file was added (but
    the objects of commits made since, when ``committed``)."""
    added = lake_files(lake_path) - files_before - {"refs.db-wal", "refs.db-shm", "gc.lock"}
    if committed:
        added = {p for p in added if not re.fullmatch(r"objects/../../[0-9a-f]{64}\.zst", p)}
    assert added == set()
    with store.open(lake_path, create=False) as lake:
        assert "objects named like a lake's files" in [c.message for c in lake.log("exp")]
        assert lake.read_bytes("y/refs.db", ref="exp") == b"not a refs database"
        assert lake.fsck() == []


@pytest.mark.parametrize(
    ("prefix", "dest"),
    [
        ("y", "lake"),
        ("y", "lake/objects/zz"),
        ("y", "lake/objects"),
        ("", "."),  # the object lake/refs.db would land on the lake's refs database
    ],
)
def test_download_dir_into_a_lake_folder_is_refused_before_anything_is_written(
    project: Path, prefix: str, dest: str
) -> None:
    before = lake_files(project / "lake")
    with store.open("lake") as lake, pytest.raises(errors.LakeFolderError) as raised:
        lake.download_dir(dest, ref="exp", prefix=prefix)
    assert str(project / "lake") in str(raised.value)
    assert isinstance(raised.value, errors.InvalidArgumentError)
    assert not (project / "y").exists()
    assert_lake_intact(project / "lake", before)


def test_a_link_to_a_lake_folder_is_no_way_into_it(project: Path) -> None:
    os.symlink(project / "lake" / "objects", project / "innocent")
    before = lake_files(project / "lake")
    with store.open("lake") as lake, pytest.raises(errors.LakeFolderError, match="lake folder"):
        lake.download_dir("innocent/sub", ref="exp", prefix="y")
    assert_lake_intact(project / "lake", before)


def test_any_embedded_lake_folder_is_protected_but_a_data_flowlake_json_is_not(
    project: Path,
) -> None:
    store.open(project / "other").close()
    other_before = lake_files(project / "other")
    with store.open("lake") as lake:
        with pytest.raises(errors.LakeFolderError, match="other"):
            lake.download_dir(project / "other" / "inside", ref="exp", prefix="y")
        assert lake_files(project / "other") == other_before
        # data/ holds a flowlake.json but no refs.db: an ordinary folder, exported into freely.
        assert lake.download_dir("data", ref="exp", prefix="y") == 2
    assert (project / "data" / "refs.db").read_bytes() == b"not a refs database"


def test_upload_dir_of_a_project_leaves_every_lake_folder_out(project: Path) -> None:
    store.open(project / "data" / "nested-lake").close()
    os.symlink(project / "lake", project / "data" / "lake-link")
    os.symlink(project / "lake" / "refs.db", project / "data" / "refs-link")
    before = lake_files(project / "lake")
    with store.open("lake") as lake:
        branch = lake.get_branch("exp")
        with pytest.warns(SkippedPathsWarning, match="data/refs-link"):
            result = branch.upload_dir(".", prefix="snap")
        assert result.lake_folders == ("data/lake-link", "data/nested-lake", "lake")
        assert [s.path for s in result.skipped] == ["data/refs-link"]
        assert "lake folder" in result.skipped[0].reason
        branch.commit("snapshot")
        assert sorted(info.path for info in lake.list("exp", "snap/")) == [
            "snap/data/flowlake.json",
            "snap/data/train.csv",
        ]
    assert_lake_intact(project / "lake", before, committed=True)


@pytest.mark.parametrize("source", ["lake", "lake/objects", "data/../lake"])
def test_uploading_a_lake_folder_or_anything_in_it_is_refused(project: Path, source: str) -> None:
    before = lake_files(project / "lake")
    with store.open("lake") as lake:
        branch = lake.get_branch("exp")
        with pytest.raises(errors.LakeFolderError, match="lake folder"):
            branch.upload_dir(source, prefix="inner")
        with pytest.raises(errors.LakeFolderError, match="lake folder"):
            branch.write_file("inner/refs.db", project / "lake" / "refs.db")
        assert list(branch.uncommitted()) == []
    assert_lake_intact(project / "lake", before)


def cli(*args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from ui.cli import app

    result = CliRunner().invoke(app, [*args, "--lake", "lake"])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["get", "-r", "y", "./lake", "--ref", "exp"],
        ["get", "-r", "y", "./lake/objects/zz", "--ref", "exp"],
        ["get", "-r", "", ".", "--ref", "exp"],
        ["get", "y/flowlake.json", "./lake", "--ref", "exp"],
        ["get", "y/refs.db", "./lake/refs.db", "--ref", "exp"],
    ],
)
def test_cli_get_into_a_lake_folder_exits_1_naming_it_and_writes_nothing(
    project: Path, args: list[str]
) -> None:
    before = lake_files(project / "lake")
    code, out, err = cli(*args)
    assert code == 1, out
    assert "lake folder" in err and str(project / "lake") in err and "Traceback" not in err
    assert "copied" not in out
    assert_lake_intact(project / "lake", before)


def test_cli_put_r_of_a_project_skips_the_lake_folder_in_one_line(project: Path) -> None:
    before = lake_files(project / "lake")
    code, out, err = cli("put", "-r", ".", "snap", "-b", "exp", "-m", "snapshot")
    assert code == 0, err
    assert "skipped the lake folder ./lake" in err and "warning" not in err
    code, out, err = cli("put", "-r", ".", "again", "-b", "exp", "--json")
    assert code == 0, err
    assert json.loads(out)["skipped_lake_folders"] == ["./lake"]
    with store.open("lake") as lake:
        paths = [info.path for info in lake.list("exp", "snap/")]
    assert paths == ["snap/data/flowlake.json", "snap/data/train.csv"]
    assert_lake_intact(project / "lake", before, committed=True)


@pytest.mark.parametrize(
    "args", [["put", "-r", "lake", "inner"], ["put", "lake/refs.db", "inner/refs.db"]]
)
def test_cli_put_of_the_lake_folder_is_refused(project: Path, args: list[str]) -> None:
    before = lake_files(project / "lake")
    code, out, err = cli(*args, "-b", "exp", "-m", "never")
    assert code == 1, out
    assert "lake folder" in err and str(project / "lake") in err and "Traceback" not in err
    with store.open("lake") as lake:
        assert lake.list("exp", "inner/") == []
    assert_lake_intact(project / "lake", before)


def test_fsspec_get_into_a_lake_folder_is_refused(project: Path) -> None:
    from store.url.filesystem import FlowlakeFileSystem

    before = lake_files(project / "lake")
    fs = FlowlakeFileSystem(lake=str(project / "lake"), skip_instance_cache=True)
    with pytest.raises(errors.LakeFolderError, match="lake folder"):
        fs.get("flowlake://exp/y/refs.db", str(project / "lake" / "refs.db"))
    with pytest.raises(errors.LakeFolderError, match="lake folder"):
        fs.get("flowlake://exp/y/", str(project / "lake" / "objects" / "zz"), recursive=True)
    fs.lake.close()
    assert_lake_intact(project / "lake", before)


@pytest.mark.parametrize("where", ["afile", "afile/lake"])
def test_a_file_as_lake_location_is_refused_naming_it_and_nothing_is_created(
    tmp_path: Path, where: str
) -> None:
    (tmp_path / "afile").write_bytes(b"data")
    with pytest.raises(errors.InvalidArgumentError, match="is a file, not a lake folder"):
        store.open(tmp_path / where)
    assert os.listdir(tmp_path) == ["afile"]
    assert (tmp_path / "afile").read_bytes() == b"data"


def test_cli_init_on_a_file_exits_1_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_bytes(b"data")
    result = CliRunner().invoke(app, ["init", "--lake", "./afile"])
    assert result.exit_code == 1, result.stdout
    assert "./afile is a file, not a lake folder" in result.stderr
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr
    assert os.listdir(tmp_path) == ["afile"]


@pytest.mark.parametrize("url", ["s3://bucket/lake", "https://example.com/lake", "gs://b/l"])
def test_a_url_is_not_taken_for_an_embedded_lakes_folder(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.InvalidArgumentError, match="is a URL: an embedded lake is a"):
        store.open(url)
    assert list(tmp_path.iterdir()) == []  # no ./s3: folder


def test_store_open_without_a_location_opens_the_default_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWLAKE_LAKE", str(tmp_path / "team-lake"))
    with store.open() as lake:
        assert lake.location == str(tmp_path / "team-lake")
    monkeypatch.delenv("FLOWLAKE_LAKE")
    monkeypatch.chdir(tmp_path)
    with store.open() as lake:
        assert lake.location == "./lake" and (tmp_path / "lake" / "refs.db").is_file()


def test_the_store_package_pickles_as_a_reference() -> None:
    import pickle

    import cloudpickle

    assert pickle.loads(pickle.dumps(store)) is store

    def opens() -> object:
        return store.open

    assert cloudpickle.loads(cloudpickle.dumps(opens))() is store.open
