"""Damage to the refs database, table by table: reads raise a StoreError (never a raw sqlite3
error), fsck reports it as problems (never a traceback), and gc refuses to guess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

import store
from store import errors


def build(path: Path) -> dict[str, str]:
    """A lake with two commits on a branch, a tag and a staged blob; returns their ids."""
    lake = store.open(path)
    branch = lake.branch("exp")
    branch.write_bytes("model.bin", os.urandom(20_000))
    first = branch.commit("v1")
    branch.write_bytes("model.bin", os.urandom(20_000))
    second = branch.commit("v2")
    lake.tag("v1", first.id)
    branch.write_bytes("staged.bin", os.urandom(20_000))
    lake.close()
    return {"first": first.id, "second": second.id, "branch": branch.name}


def sql(path: Path, statement: str, *args: object) -> None:
    con = sqlite3.connect(path / "refs.db")
    con.execute(statement, args)
    con.commit()
    con.close()


def fsck_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ui.cli", "fsck", "--lake", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass(frozen=True)
class Damage:
    """What is done to refs.db, a fragment fsck must report, a read that must then raise a
    StoreError (None where reads rightly go on), and whether gc must refuse to run."""

    apply: Callable[[Path, dict[str, str]], None]
    reported: str
    read: Callable[[store.Lake, dict[str, str]], object] | None
    gc_refuses: bool


DAMAGES: dict[str, Damage] = {
    "branches: production row missing": Damage(
        lambda p, ids: sql(p, "DELETE FROM branches WHERE name = 'main'"),
        "production branch 'main' is missing",
        lambda lake, ids: lake.read_bytes("x", ref="main"),
        gc_refuses=False,
    ),
    "branches: head is not a commit id": Damage(
        lambda p, ids: sql(p, "UPDATE branches SET head = 'garbage' WHERE name LIKE 'u-%'"),
        "is not a commit id",
        lambda lake, ids: lake.read_bytes("model.bin", ref=ids["branch"]),
        gc_refuses=True,
    ),
    "branches: head points at no commit": Damage(
        lambda p, ids: sql(p, "UPDATE branches SET head = ? WHERE name LIKE 'u-%'", "ab" * 32),
        "points at missing commit",
        lambda lake, ids: lake.read_bytes("model.bin", ref=ids["branch"]),
        gc_refuses=True,
    ),
    "branches: protection flag lost": Damage(
        lambda p, ids: sql(p, "UPDATE branches SET protected = 0 WHERE name = 'main'"),
        "is not protected",
        None,
        gc_refuses=False,
    ),
    "tags: tag points at no commit": Damage(
        lambda p, ids: sql(p, "UPDATE tags SET commit_id = ?", "cd" * 32),
        "tag 'v1' points at missing commit",
        lambda lake, ids: lake.read_bytes("model.bin", ref="v1"),
        gc_refuses=True,
    ),
    "commits: a parent's row is missing": Damage(
        lambda p, ids: sql(p, "DELETE FROM commits WHERE id = ?", ids["first"]),
        "missing commit {first}",
        lambda lake, ids: lake.log(ids["branch"]),
        gc_refuses=True,
    ),
    "commits: tree column swapped": Damage(
        lambda p, ids: sql(
            p,
            "UPDATE commits SET tree = (SELECT tree FROM commits WHERE id = ?) WHERE id = ?",
            ids["first"],
            ids["second"],
        ),
        "commit {second}: index disagrees with the stored record (tree)",
        None,
        gc_refuses=False,
    ),
    "commits: parents column rewritten": Damage(
        lambda p, ids: sql(p, "UPDATE commits SET parents = '[]' WHERE id = ?", ids["second"]),
        "commit {second}: index disagrees with the stored record (parents)",
        None,
        gc_refuses=False,
    ),
    "commits: generation column changed": Damage(
        lambda p, ids: sql(p, "UPDATE commits SET generation = 99 WHERE id = ?", ids["second"]),
        "commit {second}: index disagrees with the stored record (generation)",
        None,
        gc_refuses=False,
    ),
    "commits: parents column not JSON": Damage(
        lambda p, ids: sql(p, "UPDATE commits SET parents = '[oops' WHERE id = ?", ids["second"]),
        "index row is damaged",
        lambda lake, ids: lake.log(ids["branch"]),
        gc_refuses=True,
    ),
    "commits: record column differs": Damage(
        lambda p, ids: sql(p, "UPDATE commits SET record = x'7b7d' WHERE id = ?", ids["second"]),
        "commit {second}: its record does not hash to its id",
        None,
        gc_refuses=True,
    ),
    "commits: record rewritten as another valid record": Damage(
        lambda p, ids: sql(
            p,
            "UPDATE commits SET record = CAST(json_set(CAST(record AS TEXT), '$.message', "
            "'forged') AS BLOB) WHERE id = ?",
            ids["second"],
        ),
        "commit {second}: its record does not hash to its id",
        None,
        gc_refuses=False,
    ),
    "staging: entry not JSON": Damage(
        lambda p, ids: sql(p, "UPDATE staging SET entry = 'nope'"),
        "staged change 'staged.bin': its row is damaged",
        lambda lake, ids: lake.read_bytes("staged.bin", ref=ids["branch"]),
        gc_refuses=True,
    ),
    "staging: entry names a missing blob": Damage(
        lambda p, ids: sql(
            p, "UPDATE staging SET entry = json_set(entry, '$[3]', ?)", "ef/ef/" + "ef" * 32
        ),
        "uncommitted change: object ef/ef/",
        lambda lake, ids: lake.read_bytes("staged.bin", ref=ids["branch"]),
        gc_refuses=False,
    ),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_damage_to_a_refs_table_is_reported_by_fsck_and_raised_as_store_errors(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / "lake"
    ids = build(path)
    damage = DAMAGES[name]
    damage.apply(path, ids)
    lake = store.open(path)
    try:
        problems = lake.fsck()
        assert any(damage.reported.format(**ids) in p for p in problems), problems
        if damage.read is not None:
            with pytest.raises(errors.StoreError):
                result = damage.read(lake, ids)
                if not isinstance(result, bytes):
                    list(result)  # type: ignore[call-overload]
        if damage.gc_refuses:
            with pytest.raises(errors.StoreError):
                lake.gc(timedelta(0))
        else:
            lake.gc(timedelta(0))
            assert sorted(lake.fsck()) == sorted(problems)  # gc made nothing worse
    finally:
        lake.close()


def test_flowlake_fsck_prints_damaged_rows_as_problems(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    ids = build(path)
    sql(path, "UPDATE commits SET parents = '[oops' WHERE id = ?", ids["second"])
    sql(path, "UPDATE staging SET entry = 'nope'")
    cli = fsck_cli(path)
    assert cli.returncode == 1 and "Traceback" not in cli.stdout + cli.stderr, cli.stderr
    assert "index row is damaged" in cli.stderr and "staged.bin" in cli.stderr


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: b"\0" * 100 + d[100:], id="header zeroed"),
        pytest.param(lambda d: d[:4096] + b"\xa5" * 4096 + d[8192:], id="page 2 overwritten"),
        pytest.param(lambda d: d[: len(d) // 2], id="truncated"),
    ],
)
def test_an_unreadable_refs_file_is_a_store_error_and_fsck_exits_1(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    path = tmp_path / "lake"
    lake = store.open(path)
    branch = lake.branch("exp")
    for i in range(30):
        branch.write_bytes(f"f{i}.txt", os.urandom(100))
        branch.commit(f"c{i}")
    lake.close()
    db = path / "refs.db"
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    db.write_bytes(damage(db.read_bytes()))
    try:
        opened = store.open(path)
    except errors.RefsDatabaseError as exc:
        assert "refs.db" in str(exc)
    else:
        try:
            assert opened.fsck() != []
        finally:
            opened.close()
    cli = fsck_cli(path)
    assert cli.returncode == 1
    assert "Traceback" not in cli.stdout + cli.stderr and "refs" in cli.stdout + cli.stderr


def test_a_dropped_table_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    build(path)
    sql(path, "DROP TABLE branches")
    lake = store.open(path)
    try:
        assert any("production branch 'main' is missing" in p for p in lake.fsck())
    finally:
        lake.close()


def test_a_lost_refs_file_is_an_error_not_a_fresh_empty_lake(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    build(path)
    for name in ("refs.db", "refs.db-wal", "refs.db-shm"):
        (path / name).unlink(missing_ok=True)
    with pytest.raises(errors.RefsDatabaseError, match="missing"):
        store.open(path)
    assert not (path / "refs.db").exists()


def test_a_closed_lake_says_it_was_closed_not_that_it_is_damaged(tmp_path: Path) -> None:
    lake = store.open(tmp_path / "lake")
    lake.close()
    with pytest.raises(errors.LakeClosedError, match="was closed: open it again") as closed:
        lake.resolve("main")
    assert "damaged" not in str(closed.value)
    assert store.open(tmp_path / "lake").resolve("main")  # the lake itself is fine
