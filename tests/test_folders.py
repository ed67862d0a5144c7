"""Folders in and out of a lake: imports never leave the folder unless asked and say what they
skipped; exports treat a prefix as a folder, check every name first, and leave no partial file.

Every test runs on each backend (the ``lake`` fixture), the CLI ones through ``lake_access``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import LakeAccess
from typer.testing import CliRunner

import store
from store.errors import InvalidArgumentError, LakeFolderError, PathClashError
from store.folders import SkippedPathsWarning
from ui.cli import app


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones included), as relative posix path -> bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def committed(lake: store.Lake, items: dict[str, bytes]) -> store.Branch:
    branch = lake.branch("exp")
    branch.write_many(items.items())
    branch.commit("files")
    return branch


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A folder with a file, a link to a secret outside it, a link inside it, a dangling link,
    a link to a folder outside it, a link back to itself and a fifo."""
    outside = tmp_path / "private"
    write(outside / "id_rsa", b"SECRET")
    write(outside / "keys" / "k", b"SECRET-KEY")
    src = tmp_path / "dataset"
    write(src / "images" / "0.png", b"png")
    os.symlink(outside / "id_rsa", src / "notes.txt")
    os.symlink(src / "images" / "0.png", src / "latest.png")
    os.symlink(tmp_path / "nowhere", src / "dangling")
    os.symlink(outside / "keys", src / "keys")
    os.symlink(src, src / "images" / "loop")
    os.mkfifo(src / "pipe")
    return src


def lake_bytes(branch: store.Branch) -> dict[str, bytes]:
    return {info.path: branch.read_bytes(info.path) for info in branch.list()}


# -- import --------------------------------------------------------------------------------------


def test_upload_dir_never_reads_outside_the_folder_and_reports_what_it_skipped(
    lake: store.Lake, dataset: Path
) -> None:
    branch = lake.branch("exp")
    with pytest.warns(SkippedPathsWarning, match="skipped 5 path"):
        result = branch.upload_dir(dataset, prefix="api")
    assert lake_bytes(branch) == {"api/images/0.png": b"png", "api/latest.png": b"png"}
    assert (result.files, result.bytes) == (2, 6)
    reasons = {s.path: s.reason for s in result.skipped}
    assert sorted(reasons) == ["dangling", "images/loop", "keys", "notes.txt", "pipe"]
    assert "leaves the folder" in reasons["notes.txt"] and "leaves the folder" in reasons["keys"]
    assert "dangling" in reasons["dangling"] and "loop" in reasons["images/loop"]
    assert "not a regular file" in reasons["pipe"]


def test_upload_dir_follow_symlinks_leaves_the_folder_but_never_loops(
    lake: store.Lake, dataset: Path
) -> None:
    branch = lake.branch("exp")
    with pytest.warns(SkippedPathsWarning):
        result = branch.upload_dir(dataset, follow_symlinks=True)
    assert lake_bytes(branch) == {
        "images/0.png": b"png",
        "keys/k": b"SECRET-KEY",
        "latest.png": b"png",
        "notes.txt": b"SECRET",
    }
    assert [s.path for s in result.skipped] == ["dangling", "images/loop", "pipe"]


def test_upload_dir_of_a_plain_folder_skips_nothing_and_warns_nothing(
    lake: store.Lake, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    write(tmp_path / "src" / "a" / "b.txt", b"b")
    result = lake.branch("exp").upload_dir(tmp_path / "src")
    assert (result.files, result.skipped) == (1, ())
    assert not [w for w in recwarn if issubclass(w.category, SkippedPathsWarning)]


# -- export --------------------------------------------------------------------------------------


def test_download_dir_exports_objects_named_like_temporary_files(
    lake: store.Lake, tmp_path: Path
) -> None:
    items = {
        "d/x": b"X",
        "d/.x.flowlake-tmp": b"OLD-STYLE-TMP",
        "d/.flowlake-abc.part": b"NEW-STYLE-TMP",
    }
    branch = committed(lake, items)
    out = tmp_path / "out"
    assert lake.download_dir(out, ref=branch.name, prefix="d") == 3
    assert files_under(out) == {k[2:]: v for k, v in items.items()}


def test_download_dir_prefix_is_a_folder_not_a_string_prefix(
    lake: store.Lake, tmp_path: Path
) -> None:
    branch = committed(
        lake,
        {"data/x.txt": b"1", "data/sub/y.txt": b"2", "data2/z.txt": b"3", "database.csv": b"4"},
    )
    for prefix in ("data", "data/", "data//"):
        out = tmp_path / f"out-{len(prefix)}"
        assert branch.download_dir(out, prefix=prefix) == 2
        assert files_under(out) == {"x.txt": b"1", "sub/y.txt": b"2"}


def test_exporting_an_object_as_a_folder_is_refused(lake: store.Lake, tmp_path: Path) -> None:
    branch = committed(lake, {"model.bin": b"w", "data/x": b"x"})
    with pytest.raises(InvalidArgumentError, match="'model.bin' is an object, not a folder"):
        branch.download_dir(tmp_path / "out", prefix="model.bin")
    assert not (tmp_path / "out").exists()
    assert branch.download_dir(tmp_path / "empty", prefix="nothing/here") == 0


def test_object_that_is_also_a_folder_is_refused_before_anything_is_written(
    lake: store.Lake, tmp_path: Path
) -> None:
    branch = committed(lake, {"d/0": b"0", "d/a": b"file", "d/a/b": b"nested"})
    out = tmp_path / "out"
    with pytest.raises(PathClashError) as raised:
        lake.download_dir(out, ref=branch.name, prefix="d")
    assert "'d/a'" in str(raised.value) and "'d/a/b'" in str(raised.value)
    assert not out.exists()


def test_failed_export_leaves_no_partial_file_and_keeps_old_files(
    lake: store.Lake, tmp_path: Path
) -> None:
    branch = committed(lake, {f"d/{i}/f.bin": bytes([i]) * 1000 for i in range(4)})
    out = tmp_path / "out"
    write(out / "0" / "f.bin", b"before")

    def stop_after_two(done: list[int] = []) -> None:  # noqa: B006 - counts calls
        done.append(1)
        if len(done) == 2:
            raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        lake.download_dir(out, ref=branch.name, prefix="d", progress=lambda n: stop_after_two())
    assert files_under(out) == {"0/f.bin": b"before"}
    assert sorted(p.name for p in out.iterdir()) == ["0"]


def test_export_refuses_a_local_folder_where_a_file_goes(lake: store.Lake, tmp_path: Path) -> None:
    branch = committed(lake, {"d/a.txt": b"a", "d/x": b"x"})
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    with pytest.raises(PathClashError, match="local folder"):
        lake.download_dir(out, ref=branch.name, prefix="d")
    assert files_under(out) == {}


def test_an_embedded_lake_folder_is_never_imported_nor_exported_into(
    lake: store.Lake, tmp_path: Path
) -> None:
    store.open(tmp_path / "project" / "other-lake").close()
    write(tmp_path / "project" / "data.csv", b"1")
    before = files_under(tmp_path / "project" / "other-lake")
    branch = lake.branch("exp")
    result = branch.upload_dir(tmp_path / "project", prefix="p")
    assert (result.files, result.lake_folders) == (1, ("other-lake",))
    assert [info.path for info in branch.list()] == ["p/data.csv"]
    branch.commit("project")
    with pytest.raises(LakeFolderError, match="other-lake"):
        lake.download_dir(tmp_path / "project" / "other-lake" / "x", ref=branch.name)
    with pytest.raises(LakeFolderError, match="other-lake"):
        branch.upload_dir(tmp_path / "project" / "other-lake")
    assert files_under(tmp_path / "project" / "other-lake") == before


# -- the CLI -------------------------------------------------------------------------------------


def cli(access: LakeAccess, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--lake", access.location])
    return result.exit_code, result.stdout, result.stderr


def test_cli_put_recursive_skips_and_lists_links_unless_asked(
    lake: store.Lake, lake_access: LakeAccess, dataset: Path
) -> None:
    lake.branch("exp")
    code, out, err = cli(lake_access, "put", "-r", str(dataset), "cli", "-b", "exp", "--json")
    assert code == 0, err
    put = json.loads(out)
    assert put["files"] == 2
    assert [s["path"] for s in put["skipped"]] == [
        "dangling",
        "images/loop",
        "keys",
        "notes.txt",
        "pipe",
    ]
    assert "skipped 5 path" in err and "notes.txt" in err
    assert "SECRET" not in lake_bytes(lake.get_branch("exp")).values()

    code, out, err = cli(
        lake_access, "put", "-r", str(dataset), "all", "-b", "exp", "--follow-symlinks", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["files"] == 4
    assert lake.get_branch("exp").read_bytes("all/notes.txt") == b"SECRET"


def test_cli_get_recursive_exports_the_folder_and_refuses_clashes(
    lake: store.Lake, lake_access: LakeAccess, tmp_path: Path
) -> None:
    committed(lake, {"data/x.txt": b"1", "data2/z.txt": b"3", "database.csv": b"4"})
    out = tmp_path / "out"
    code, stdout, err = cli(lake_access, "get", "-r", "data", str(out), "--ref", "exp", "--json")
    assert code == 0, err
    assert json.loads(stdout)["files"] == 1
    assert files_under(out) == {"x.txt": b"1"}

    branch = lake.get_branch("exp")
    branch.write_bytes("data/x.txt/inner", b"2")
    branch.commit("clash")
    again = tmp_path / "again"
    code, _, err = cli(lake_access, "get", "-r", "data", str(again), "--ref", "exp")
    assert code == 1
    assert "'data/x.txt'" in err and "'data/x.txt/inner'" in err and "Traceback" not in err
    assert not again.exists()
