"""The ``flowlake`` command, driven through typer's CliRunner against real embedded lakes."""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import store
import tracking
from ui import transfer
from ui.cli import app


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    """An initialised, empty lake folder."""
    path = tmp_path / "lake"
    result = CliRunner().invoke(app, ["init", "--lake", str(path)])
    assert result.exit_code == 0, result.output
    return path


def flowlake(lake_dir: Path, *args: str, stdin: bytes | None = None) -> Result:
    """Run one command against ``lake_dir``."""
    return CliRunner().invoke(app, [*args, "--lake", str(lake_dir)], input=stdin)


def ok(lake_dir: Path, *args: str, env_width: int | None = None) -> Result:
    """Run a command that must succeed (``env_width``: the terminal's columns)."""
    if env_width is None:
        result = flowlake(lake_dir, *args)
    else:
        env = {"COLUMNS": str(env_width)}
        result = CliRunner().invoke(app, [*args, "--lake", str(lake_dir)], env=env)
    assert result.exit_code == 0, result.output
    return result


def ok_json(lake_dir: Path, *args: str) -> Any:
    """Run a command with ``--json`` that must succeed; its parsed standard output."""
    return json.loads(ok(lake_dir, *args, "--json").stdout)


def fails(lake_dir: Path, *args: str, code: int = 1) -> str:
    """Run a command that must fail with ``code``; its standard error."""
    result = flowlake(lake_dir, *args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.stderr


@pytest.fixture
def exp(lake_dir: Path) -> str:
    """Branch ``exp`` of user:tester, created from main."""
    ok(lake_dir, "branch", "create", "exp")
    return "exp"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- lake ----------------------------------------------------------------------------------------


def test_init_creates_once_then_finds_the_lake(tmp_path: Path) -> None:
    path = tmp_path / "new"
    first = ok_json(path, "init")
    second = ok_json(path, "init")
    assert first["created"] is True and second["created"] is False
    assert first["main"] == second["main"]


def test_lake_defaults_to_the_environment_variable(tmp_path: Path) -> None:
    env = {"FLOWLAKE_LAKE": str(tmp_path / "env-lake")}
    assert CliRunner().invoke(app, ["init"], env=env).exit_code == 0
    listed = CliRunner().invoke(app, ["branch", "list", "--json"], env=env)
    assert [b["name"] for b in json.loads(listed.stdout)] == ["main"]


def test_commands_other_than_init_never_create_a_lake(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    err = fails(missing, "ls")
    assert "no lake" in err and "flowlake init" in err
    assert not missing.exists()


# -- branches ------------------------------------------------------------------------------------


def test_branch_create_list_delete(lake_dir: Path) -> None:
    created = ok_json(lake_dir, "branch", "create", "exp")
    assert created["name"] == "user:tester/exp" and created["namespace"] == "user:tester"
    ok(lake_dir, "branch", "create", "exp", "--namespace", "user:avery")

    mine = {b["name"]: b for b in ok_json(lake_dir, "branch", "list")}
    assert set(mine) == {"main", "user:tester/exp"}
    assert mine["main"]["protected"] is True and mine["main"]["namespace"] == "production"
    everything = {b["name"] for b in ok_json(lake_dir, "branch", "list", "--all")}
    assert everything == {"main", "user:tester/exp", "user:avery/exp"}
    assert "user:tester/exp" in ok(lake_dir, "branch", "list").stdout

    assert ok_json(lake_dir, "branch", "delete", "exp") == {"deleted": "user:tester/exp"}
    assert {b["name"] for b in ok_json(lake_dir, "branch", "list")} == {"main"}


def test_branch_list_at_80_columns_keeps_names_and_namespaces_whole(lake_dir: Path) -> None:
    run_branch = "run-7a93d13852f54606821421d826a047a5"
    ok(lake_dir, "branch", "create", run_branch, "--namespace", "user:avery")
    result = CliRunner().invoke(
        app, ["branch", "list", "--all", "--runs", "--lake", str(lake_dir)], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(
        f"user:avery/{run_branch}" in line and "user:avery" in line.split()[1:] for line in lines
    )
    assert any(line.startswith("main") and "production" in line for line in lines)


def test_branch_from_a_past_ref(lake_dir: Path, exp: str, tmp_path: Path) -> None:
    src = write(tmp_path / "a.txt", b"a")
    first = ok_json(lake_dir, "put", str(src), "-b", exp, "-m", "one")["commit"]
    ok(lake_dir, "put", str(src), "b.txt", "-b", exp, "-m", "two")
    old = ok_json(lake_dir, "branch", "create", "old", "--source", f"{exp}~1")
    assert old["head"] == first["id"]


# -- data ----------------------------------------------------------------------------------------


def test_put_diff_commit_ls_cat(lake_dir: Path, exp: str, tmp_path: Path) -> None:
    src = write(tmp_path / "report.txt", b"hello lake\n")
    put = ok_json(lake_dir, "put", str(src), "docs/", "-b", exp)
    assert put["path"] == "docs/report.txt" and put["bytes"] == 11 and put["commit"] is None

    pending = ok_json(lake_dir, "diff", exp)
    assert pending["changes"] == [{"path": "docs/report.txt", "kind": "added"}]
    commit = ok_json(lake_dir, "commit", "-b", exp, "-m", "add report", "--meta", "team=ml")
    assert commit["metadata"] == {"team": "ml"} and commit["branch"] == "user:tester/exp"
    assert ok_json(lake_dir, "diff", exp)["changes"] == []

    listed = ok_json(lake_dir, "ls", "--ref", exp)
    assert [(o["path"], o["size"]) for o in listed] == [("docs/report.txt", 11)]
    assert ok_json(lake_dir, "ls") == []  # main is untouched
    assert ok(lake_dir, "cat", "docs/report.txt", "--ref", exp).stdout_bytes == b"hello lake\n"
    assert "docs/report.txt" in ok(lake_dir, "ls", "--ref", exp).stdout


def test_put_reads_standard_input(lake_dir: Path, exp: str) -> None:
    result = flowlake(lake_dir, "put", "-", "raw/blob.bin", "-b", exp, stdin=b"\x00\x01\x02")
    assert result.exit_code == 0, result.output
    assert ok(lake_dir, "cat", "raw/blob.bin", "--ref", exp).stdout_bytes == b"\x00\x01\x02"


def test_large_file_put_and_get_show_progress(
    lake_dir: Path, exp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "PROGRESS_MIN_BYTES", 1024)
    payload = bytes(range(256)) * 8192  # 2 MiB
    src = write(tmp_path / "weights.bin", payload)
    put = flowlake(lake_dir, "put", str(src), "models/weights.bin", "-b", exp)
    assert put.exit_code == 0, put.output
    assert "put models/weights.bin" in put.stderr

    out = tmp_path / "back.bin"
    got = flowlake(lake_dir, "get", "models/weights.bin", str(out), "--ref", exp)
    assert got.exit_code == 0, got.output
    assert "get models/weights.bin" in got.stderr
    assert out.read_bytes() == payload


def test_put_recursive_then_ls_and_get_recursive(lake_dir: Path, exp: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    for label in ("cat", "dog"):
        for i in range(30):
            write(images / label / f"{i:03}.png", f"{label}-{i}".encode())
    put = ok_json(lake_dir, "put", "-r", str(images), "datasets/pets", "-b", exp, "-m", "pets")
    assert put["files"] == 60 and put["commit"]["message"] == "pets"

    dogs = ok_json(lake_dir, "ls", "datasets/pets/dog/", "--ref", exp)
    assert len(dogs) == 30 and dogs[0]["path"] == "datasets/pets/dog/000.png"
    assert "60 objects" in ok(lake_dir, "ls", "datasets/", "--ref", exp).stdout

    out = tmp_path / "export"
    got = ok_json(lake_dir, "get", "-r", "datasets/pets", str(out), "--ref", exp)
    assert got["files"] == 60
    assert (out / "cat" / "007.png").read_bytes() == b"cat-7"


def test_get_single_file_into_a_folder(lake_dir: Path, exp: str, tmp_path: Path) -> None:
    ok(lake_dir, "put", str(write(tmp_path / "a.csv", b"x,y\n")), "t/a.csv", "-b", exp)
    folder = tmp_path / "dl"
    folder.mkdir()
    assert ok_json(lake_dir, "get", "t/a.csv", str(folder), "--ref", exp)["files"] == 1
    assert (folder / "a.csv").read_bytes() == b"x,y\n"


def test_get_r_of_a_prefix_matching_nothing_fails_naming_prefix_and_ref_and_writes_nothing(
    lake_dir: Path, exp: str, tmp_path: Path
) -> None:
    ok(lake_dir, "put", str(write(tmp_path / "a.png", b"a")), "data/images/a.png", "-b", exp)
    out = tmp_path / "x"
    result = flowlake(lake_dir, "get", "-r", "data/image", str(out), "--ref", exp)
    assert result.exit_code == 1, result.output
    assert "no objects under 'data/image/' at exp" in " ".join(result.stderr.split())
    assert "━" not in result.output and "0/0" not in result.output  # no bar before the error
    assert not out.exists()


def test_get_r_of_a_single_object_says_to_drop_r_without_a_bar(
    lake_dir: Path, exp: str, tmp_path: Path
) -> None:
    ok(lake_dir, "put", str(write(tmp_path / "a.png", b"a")), "data/images/a.png", "-b", exp)
    result = flowlake(lake_dir, "get", "-r", "data/images/a.png", str(tmp_path / "y"), "--ref", exp)
    assert result.exit_code == 1, result.output
    assert "is an object, not a folder: copy it without -r" in " ".join(result.stderr.split())
    assert "0/0" not in result.output and not (tmp_path / "y").exists()


def test_ls_of_a_prefix_matching_nothing_says_so_in_one_line(lake_dir: Path, exp: str) -> None:
    out = ok(lake_dir, "ls", "nosuch/", "--ref", exp).stdout
    assert out.strip() == f"no objects under 'nosuch/' at {exp}"
    assert ok_json(lake_dir, "ls", "nosuch/", "--ref", exp) == []


# -- history -------------------------------------------------------------------------------------


def test_merge_tag_log_diff_revert(lake_dir: Path, exp: str, tmp_path: Path) -> None:
    ok(lake_dir, "put", str(write(tmp_path / "m.bin", b"model")), "m.bin", "-b", exp, "-m", "m")
    changes = ok_json(lake_dir, "diff", "main", exp)["changes"]
    assert changes == [{"path": "m.bin", "kind": "added"}]

    merged = ok_json(lake_dir, "merge", exp, "-m", "ship it", "--meta", "gate=passed")
    assert merged["into"] == "main" and merged["metadata"] == {"gate": "passed"}
    assert len(merged["parents"]) == 2
    tagged = ok_json(lake_dir, "tag", "v1")
    assert tagged == {"name": "v1", "commit": {**tagged["commit"], "id": merged["id"]}}
    assert ok_json(lake_dir, "tag") == [{"name": "v1", "commit": merged["id"]}]
    assert "v1" in ok(lake_dir, "tag").stdout

    log = ok_json(lake_dir, "log", "v1")
    assert [c["message"] for c in log] == ["ship it", "m", "Repository created"]
    assert len(ok_json(lake_dir, "log", "--limit", "1")) == 1
    assert "ship it" in ok(lake_dir, "log").stdout

    first = ok_json(lake_dir, "log", exp)[0]["id"]
    reverted = ok_json(lake_dir, "revert", first[:10], "-b", exp)
    assert reverted["branch"] == exp
    assert ok_json(lake_dir, "ls", "--ref", exp) == []
    assert ok(lake_dir, "cat", "m.bin", "--ref", "v1").stdout_bytes == b"model"

    assert ok_json(lake_dir, "tag", "-d", "v1") == {"deleted": "v1"}
    assert ok_json(lake_dir, "tag") == []


def test_merge_conflict_names_the_paths(lake_dir: Path, tmp_path: Path) -> None:
    ok(lake_dir, "branch", "create", "a")
    ok(lake_dir, "branch", "create", "b")
    ok(lake_dir, "put", str(write(tmp_path / "1", b"one")), "cfg.json", "-b", "a", "-m", "a")
    ok(lake_dir, "put", str(write(tmp_path / "2", b"two")), "cfg.json", "-b", "b", "-m", "b")
    ok(lake_dir, "merge", "a")
    err = fails(lake_dir, "merge", "b")
    assert "conflict" in err and "cfg.json" in err
    ok(lake_dir, "merge", "b", "--strategy", "source-wins")
    assert ok(lake_dir, "cat", "cfg.json").stdout_bytes == b"two"


def test_reading_a_colleagues_branch(lake_dir: Path, tmp_path: Path) -> None:
    src = write(tmp_path / "r.txt", b"avery's")
    ok(lake_dir, "branch", "create", "exp", "--namespace", "user:avery")
    ok(lake_dir, "put", str(src), "-b", "exp", "--namespace", "user:avery", "-m", "r")
    assert ok(lake_dir, "cat", "r.txt", "--ref", "user:avery/exp").stdout_bytes == b"avery's"


# -- maintenance ---------------------------------------------------------------------------------


def test_fsck_and_gc_on_a_healthy_lake(lake_dir: Path, exp: str, tmp_path: Path) -> None:
    ok(lake_dir, "put", str(write(tmp_path / "x", b"x" * 100_000)), "x", "-b", exp, "-m", "x")
    assert ok_json(lake_dir, "fsck") == {"ok": True, "problems": []}
    assert "healthy" in ok(lake_dir, "fsck").stdout
    gc = ok_json(lake_dir, "gc", "--retention", "0")
    assert gc["retention_seconds"] == 0 and gc["removed"] >= 0
    assert ok(lake_dir, "cat", "x", "--ref", exp).stdout_bytes == b"x" * 100_000


@pytest.mark.parametrize("retention", ["6", "1.5", "6 hours", "-1h"])
def test_gc_retention_without_a_unit_is_refused_naming_the_forms(
    lake_dir: Path, retention: str
) -> None:
    message = fails(lake_dir, "gc", "--retention", retention, code=2)
    assert "90s, 30m, 6h, 7d or 1w" in " ".join(message.split())


@pytest.mark.parametrize(("retention", "seconds"), [("0", 0), ("90s", 90), ("1w", 604800)])
def test_gc_retention_takes_a_unit_or_a_bare_zero(
    lake_dir: Path, retention: str, seconds: int
) -> None:
    assert ok_json(lake_dir, "gc", "--retention", retention)["retention_seconds"] == seconds


def test_fsck_reports_a_corrupted_object(lake_dir: Path, exp: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 400
    ok(lake_dir, "put", str(write(tmp_path / "w", data)), "w.bin", "-b", exp, "-m", "w")
    checksum = ok_json(lake_dir, "ls", "--ref", exp)[0]["checksum"]
    stored = [p for p in (lake_dir / "objects").rglob(f"{checksum}*") if p.is_file()]
    assert stored, "the object should be stored under its content hash"
    stored[0].chmod(0o644)
    stored[0].write_bytes(b"garbage")
    result = flowlake(lake_dir, "fsck", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["problems"]
    assert "error:" in fails(lake_dir, "cat", "w.bin", "--ref", exp)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["branch", "create", "bad name"], "invalid branch name"),
        (["branch", "create", "x", "--namespace", "nobody"], "invalid namespace"),
        (["branch", "create", "x", "--source", "nope"], "nope"),
        (["branch", "create", "exp"], "exists"),
        (["branch", "delete", "main"], "protected"),
        (["log", "nope"], "nope"),
        (["diff", "main", "missing~3"], "missing"),
        (["cat", "no/such/file"], "no/such/file"),
        (["ls", "../etc"], ".."),
        (["merge", "exp", "--into", "exp"], "itself"),
        (["merge", "exp"], "nothing"),
        (["tag", "bad tag!"], "invalid tag name"),
        (["commit", "-b", "exp", "-m", "empty"], "no uncommitted changes"),
        (["commit", "-b", "main", "-m", "sneaky"], "protected"),
        (["revert", "main", "-b", "nope"], "nope"),
    ],
)
def test_store_errors_print_one_red_line_and_exit_1(
    lake_dir: Path, exp: str, args: list[str], expected: str
) -> None:
    err = fails(lake_dir, *args)
    assert err.startswith("error: ")
    assert expected.lower() in err.lower()
    assert len(err.strip().splitlines()) == 1


def test_path_with_dotdot_and_writing_to_main_change_nothing(
    lake_dir: Path, exp: str, tmp_path: Path
) -> None:
    src = write(tmp_path / "f.txt", b"f")
    assert "'..'" in fails(lake_dir, "put", str(src), "a/../b", "-b", exp)
    assert "protected" in fails(lake_dir, "put", str(src), "f.txt", "-b", "main")
    assert "absolute" in fails(lake_dir, "put", str(src), "/etc/f", "-b", exp)
    assert ok_json(lake_dir, "diff", exp)["changes"] == []
    assert ok_json(lake_dir, "ls") == []


@pytest.mark.parametrize(
    "args",
    [
        ["gc", "--retention", "soon"],
        ["merge", "exp", "--strategy", "mine-wins"],
        ["commit", "-b", "exp", "-m", "x", "--meta", "novalue"],
        ["commit", "-b", "exp"],
        ["put", ".", "-b", "exp"],
        ["put", "does-not-exist.txt", "-b", "exp"],
        ["put", "-", "-b", "exp"],
        ["get", "-r", "data"],
        ["tag", "-d"],
        ["log", "--limit", "0"],
        ["frobnicate"],
    ],
)
def test_bad_usage_exits_2(lake_dir: Path, exp: str, args: list[str]) -> None:
    fails(lake_dir, *args, code=2)


def test_help_lists_every_command_on_one_line() -> None:
    groups = [group.name for group in app.registered_groups if group.name]
    for args in ([], *([name] for name in groups)):
        result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
        assert rows and not [row for row in rows if re.match(r"│ {4,}\S", row)], args


def test_ls_and_diff_fold_flowlake_records_unless_asked(lake_dir: Path, tmp_path: Path) -> None:
    with store.open(lake_dir, namespace="user:tester") as lake:
        exp = lake.branch("exp", source="main")
        exp.write_bytes("data/a.csv", b"x,y\n1,2\n")
        exp.commit("data")
        run = tracking.start_run(lake, branch="exp", name="r", code_dir=str(tmp_path))
        run.log_metric("acc", 0.5)
        run.end()
        records = [o.path for o in lake.list(ref="exp") if o.path.startswith("_flowlake/")]
    assert len(records) > 3

    listed = ok(lake_dir, "ls", "--ref", "exp").stdout
    assert "data/a.csv" in listed and "_flowlake/" not in listed.replace("under _flowlake/", "")
    assert f"+ {len(records)} objects in flowlake records under _flowlake/" in listed
    everything = ok(lake_dir, "ls", "--ref", "exp", "--all", env_width=300).stdout
    assert all(path in everything for path in records)
    inside = ok(lake_dir, "ls", "_flowlake/runs", "--ref", "exp", env_width=300).stdout
    assert "(--all lists them)" not in inside and "run.parquet" in inside
    assert len(ok_json(lake_dir, "ls", "--ref", "exp")) == len(records) + 1

    changed = ok(lake_dir, "diff", "main", "exp").stdout
    assert "data/a.csv" in changed and "changes in flowlake records" in changed
    assert "run.parquet" in ok(lake_dir, "diff", "main", "exp", "-a", env_width=300).stdout
    paths = {c["path"] for c in ok_json(lake_dir, "diff", "main", "exp")["changes"]}
    assert paths == {"data/a.csv", *records}
    with store.open(lake_dir, namespace="user:tester") as lake:
        lake.get_branch("exp").write_bytes("_flowlake/note.txt", b"x")
        lake.get_branch("exp").commit("only a record")
    only_records = ok(lake_dir, "diff", "exp~1", "exp").stdout
    assert "no changes from exp~1 to exp outside _flowlake/" in only_records
    assert "+ 1 change in flowlake records" in only_records
    assert "1 object, " in ok(lake_dir, "ls", "data/", "--ref", "exp").stdout


def test_version_prints_the_installed_distribution_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"flowlake {version('flowlake')}"


# -- demo ----------------------------------------------------------------------------------------


def test_demo_tells_the_story_and_leaves_the_lake_in_its_final_state(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    path = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--path", str(path)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    for beat in ("dana", "avery", "blake", "experiment runs", "promotion gate", "model-v1"):
        assert beat in result.stdout
    # every command it shows can be pasted as it is: on the demo lake, values never cut
    shown = [line for line in result.stdout.splitlines() if line.startswith("$ ")]
    assert any(" merge " in c for c in shown)
    (token_create,) = [c for c in shown if " token create " in c]
    assert "--scope promote --scope write " in token_create  # the least CI needs, not all
    assert "scopes promote, write only" in result.stdout
    assert all(f"--lake {path}" in command for command in shown), shown
    (created,) = [line for line in result.stdout.splitlines() if "token-create" in line]
    expires = created.split("expires=")[1].split(",")[0]
    assert datetime.fromisoformat(expires).tzinfo is not None, created

    with store.open(path, namespace="production") as lake:
        assert set(lake.tags()) == {"data-v1", "model-v1"}
        assert lake.commit("model-v1").id == lake.commit("main").id
        metrics = lake.read_table("models/classifier/metrics.parquet").to_pylist()[0]
        model = pickle.loads(lake.read_bytes("models/classifier/model.pkl"))
        test = lake.read_table("data/test.parquet", ref="data-v1")
        changed = {c.path for c in lake.diff("data-v1", "model-v1")}
        assert {p for p in changed if not p.startswith("_flowlake/")} == {
            "models/classifier/model.pkl",
            "models/classifier/metrics.parquet",
        }
        runs = tracking.sql(lake, "SELECT user, status FROM runs ORDER BY user").to_pylist()
        assert runs == [
            {"user": "avery", "status": "finished"},
            {"user": "blake", "status": "finished"},
        ]
        assert lake.fsck() == []
        names = {b.name for b in lake.branches(all_namespaces=True)}
    assert {"user:dana/ingest", "user:avery/clf-logreg", "user:blake/clf-forest"} <= names
    assert metrics["accuracy"] > 0.9 and metrics["trained_by"] in ("user:avery", "user:blake")

    features = json.loads(metrics["features"])
    assert len(features) == metrics["n_features"]
    rows = list(zip(*(test[c].to_pylist() for c in features), strict=True))
    predicted = model.predict(rows)
    accuracy = sum(int(p == t) for p, t in zip(predicted, test["benign"].to_pylist(), strict=True))
    assert round(accuracy / test.num_rows, 4) == metrics["accuracy"]

    again = CliRunner().invoke(app, ["demo", "--path", str(path)])
    assert again.exit_code == 1 and "--fresh" in again.stderr
    fresh = CliRunner().invoke(app, ["demo", "--path", str(path), "--fresh", "--json"])
    assert fresh.exit_code == 0, fresh.output
    summary = json.loads(fresh.stdout)
    promoted = next(c for c in summary["candidates"] if c["branch"] == summary["promoted"])
    assert promoted["metrics"]["accuracy"] == metrics["accuracy"]  # the same, run after run
    assert summary["production_accuracy"] < metrics["accuracy"]


def test_the_demo_extra_installs_what_the_printed_dashboard_command_needs() -> None:
    """``make demo`` installs ``.[demo]`` and the demo ends with ``flowlake ui``."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]

    def closure(extra: str) -> set[str]:
        found = set()
        for requirement in extras[extra]:
            found.add(requirement)
            if requirement.startswith("flowlake["):
                for inner in requirement[len("flowlake[") : -1].split(","):
                    found |= closure(inner.strip())
        return found

    assert set(extras["ui"]) <= closure("demo")


def test_demo_refuses_a_folder_that_is_not_a_demo_lake(tmp_path: Path) -> None:
    precious = write(tmp_path / "work" / "thesis.tex", b"do not delete")
    for flags in ([], ["--fresh"]):
        result = CliRunner().invoke(app, ["demo", "--path", str(precious.parent), *flags])
        assert result.exit_code == 1
        assert "not empty" in result.stderr
    assert precious.read_bytes() == b"do not delete"


def test_demo_without_scikit_learn_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sklearn" else real_find_spec(name, *a),
    )
    result = CliRunner().invoke(app, ["demo", "--path", str(tmp_path / "demo")])
    assert result.exit_code == 1
    assert "flowlake[demo]" in result.stderr
    assert not (tmp_path / "demo").exists()


def error_line(lake_dir: Path, *args: str) -> str:
    """Run a command that must fail with 1; its standard error as one line (rich wraps it)."""
    return " ".join(fails(lake_dir, *args).split())


def test_runs_refuses_an_unknown_status_or_branch_as_runs_compact_does(lake_dir: Path) -> None:
    assert "running, finished, failed, killed, stale" in error_line(
        lake_dir, "runs", "--status", "bogus"
    )
    assert "branch 'nope' does not exist" in error_line(lake_dir, "runs", "--branch", "nope")
    assert "branch 'nope' does not exist" in error_line(
        lake_dir, "runs", "compact", "--branch", "nope"
    )
    assert "limit must be an int >= 0" in error_line(lake_dir, "runs", "--limit", "-1")
    assert ok_json(lake_dir, "runs", "--branch", "main", "--status", "stale") == []


def test_sql_on_a_misspelt_view_suggests_the_view(lake_dir: Path) -> None:
    err = error_line(lake_dir, "sql", "SELECT * FROM runz")
    assert "runz does not exist" in err and "closest to 'runz': runs" in err


def test_a_command_run_from_a_subfolder_points_at_the_lake_above(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = lake_dir.parent / "src" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    monkeypatch.delenv("FLOWLAKE_LAKE", raising=False)
    result = CliRunner().invoke(app, ["ls"])
    assert result.exit_code == 1
    assert "there is one at ../../lake: pass --lake ../../lake" in result.output
