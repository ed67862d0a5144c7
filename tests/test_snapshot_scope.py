"""What a code snapshot leaves out: lakes, environments, caches and job folders in the project.

A lake kept inside the project folder (``./lake``, as in the quickstart) must not be copied into
each run's snapshot: its job logs and code checkouts would then nest one snapshot in the next.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import store
import tracking
from tracking import snapshot

CODE = {"train.py": b"x = 1\n", "pkg/model.py": b"y = 2\n", "conf.yaml": b"a: 1\n"}


def write(path: Path, data: bytes = b"print('not code')\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def project_with_lake_and_venv(root: Path) -> Path:
    """A plain project folder holding code, an embedded lake with job folders, a venv under
    an unusual name, a tagged cache and the usual clutter."""
    for rel, data in CODE.items():
        write(root / rel, data)
    store.open(root / "lake").close()
    write(root / "lake" / "compute" / "jobs" / "j1" / "log.txt")
    write(root / "lake" / "compute" / "jobs" / "j1" / "spec.json", b"{}")
    write(root / "lake" / "compute" / "code" / "abc" / "files" / "train.py")
    write(root / "myenv" / "pyvenv.cfg", b"home = /usr/bin\n")
    write(root / "myenv" / "lib" / "python3" / "site-packages" / "pkg.py")
    write(root / "conda" / "conda-meta" / "history")
    write(root / "conda" / "lib" / "mod.py")
    write(root / "tool-cache" / "CACHEDIR.TAG", b"Signature: 8a477f597d28d172789f06886806bc55")
    write(root / "tool-cache" / "entry.json", b"{}")
    write(root / "pkg" / "__pycache__" / "model.py")
    write(root / "node_modules" / "x" / "index.json", b"{}")
    return root


def code_rows(lake: store.Lake, run_id: str) -> list[tuple[str, int]]:
    rows = tracking.sql(
        lake, f"SELECT path, size FROM code WHERE run_id = '{run_id}' ORDER BY path"
    ).to_pylist()
    return [(r["path"], r["size"]) for r in rows]


EXPECTED = sorted((p, len(d)) for p, d in CODE.items())


def test_run_from_a_plain_folder_snapshots_only_its_code(
    lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_with_lake_and_venv(tmp_path / "proj")
    # flowlake's own cache and compute state folders inside the project are left out too.
    monkeypatch.setenv("FLOWLAKE_CACHE_DIR", str(project / "flcache"))
    monkeypatch.setenv("FLOWLAKE_COMPUTE_DIR", str(project / "flstate"))
    write(project / "flcache" / "runs" / "v1" / "code" / "k.json", b"{}")
    write(project / "flstate" / "k" / "jobs" / "j" / "log.txt")
    for _ in range(3):
        with tracking.start_run(lake, name="r", code_dir=project) as run:
            pass
        assert code_rows(lake, run.id) == EXPECTED


def test_repeated_runs_into_a_lake_inside_the_project_do_not_grow_the_snapshot(
    tmp_path: Path,
) -> None:
    project = project_with_lake_and_venv(tmp_path / "proj")
    with store.open(project / "lake") as lake:
        sizes = []
        for _ in range(3):
            with tracking.start_run(lake, name="r", code_dir=project) as run:
                run.log_metric("m", 1.0)
            rows = code_rows(lake, run.id)
            assert rows == EXPECTED
            sizes.append(sum(size for _, size in rows))
        assert len(set(sizes)) == 1


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_untracked_lake_and_venv_in_a_git_work_tree_are_left_out(tmp_path: Path) -> None:
    project = project_with_lake_and_venv(tmp_path / "proj")
    # A project's own file named flowlake.json does not make its folder a lake.
    write(project / "flowlake.json", b"{}")
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", str(project)], check=True, env=env)
    code = snapshot.capture(project)
    assert code.git_commit is None  # a work tree without commits: listed by git all the same
    assert [f.path for f in code.files] == sorted([*CODE, "flowlake.json"])
    assert not code.truncated


def test_a_walk_that_meets_its_limits_marks_the_snapshot_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "proj"
    for rel, data in CODE.items():
        write(project / rel, data)
    assert not snapshot.capture(project).truncated
    monkeypatch.setattr(snapshot, "MAX_FILES", 2)
    capped = snapshot.capture(project)
    assert capped.truncated and len(capped.files) == 2
    monkeypatch.setattr(snapshot, "MAX_FILES", 2000)
    for i in range(50):
        write(project / "data" / f"{i}.bin", b"\0")
    monkeypatch.setattr(snapshot, "MAX_WALK_ENTRIES", 20)
    assert snapshot.capture(project).truncated


def test_a_source_file_over_the_size_limit_is_left_out_and_marks_the_snapshot_truncated(
    tmp_path: Path,
) -> None:
    project = tmp_path / "proj"
    write(project / "train.py", b"x = 1\n")
    write(project / "big.json", b" " * (snapshot.MAX_FILE_BYTES + 1))
    code = snapshot.capture(project)
    assert [f.path for f in code.files] == ["train.py"] and code.truncated


def test_build_and_container_recipes_are_code_and_data_files_are_not(tmp_path: Path) -> None:
    for name in ("Makefile", "Dockerfile", "train.py", "small.csv", "weights.bin"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Containerfile").write_text("FROM python\n")
    listed = sorted(f.path for f in snapshot.capture(tmp_path).files)
    assert listed == ["Dockerfile", "Makefile", "docker/Containerfile", "train.py"]
