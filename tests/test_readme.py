"""The README's Python examples run top to bottom as written, in one interpreter, on a fresh
lake in an empty folder (what a newcomer pasting them does)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"

#: Blocks that need what a fresh folder lacks: a lakeFS server, a lake with a policy. Each is
#: covered by its own tests (test_lakefs_*, test_policy_*). The compute block runs: a laptop
#: without a GPU or a package index must be able to follow it.
NEEDS_MORE = ('store.open("lakefs://', 'perimeter="staging"')


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_python_examples_run_in_order_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pandas")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWLAKE_LAKE", raising=False)
    monkeypatch.setenv("FLOWLAKE_GPUS", "")  # a laptop: no GPU, whatever this machine has
    monkeypatch.setenv("FLOWLAKE_LEASE_DIR", str(tmp_path / "leases"))  # no other test's jobs
    blocks = [b for b in python_blocks() if not any(marker in b for marker in NEEDS_MORE)]
    assert len(blocks) >= 7
    assert any("compute.submit(" in block for block in blocks)
    namespace: dict[str, object] = {}
    for number, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"README python block {number} fails:\n{block}") from exc
    lake = namespace["lake"]
    assert lake.read_bytes("models/clf.bin", ref="v1") == b"weights"  # type: ignore[attr-defined]
    # Later blocks must not undo what earlier ones put on main (a merge carrying a revert did).
    assert lake.exists("data/train.parquet", "main")  # type: ignore[attr-defined]
    assert namespace["job"].status == "succeeded"  # type: ignore[attr-defined]
    assert [job.wait() for job in namespace["jobs"]] == [0.93, 0.93]  # type: ignore[attr-defined]


def test_readme_names_every_extra_in_pyproject() -> None:
    """A newcomer learns from the README which extra each part needs: every extra is listed."""
    import tomllib

    extras = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    text = README.read_text()
    missing = [name for name in extras if name != "all" and f"`[{name}]`" not in text]
    assert not missing, f"README's install table lacks {missing}"
    assert "'.[all]'" in text


def test_the_readme_python_api_example_reverts_the_commit_its_comment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``c`` stays the "train v1" commit through the block: the revert and the read by commit id
    prefix act on it, not on a later commit that reused the name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWLAKE_LAKE", raising=False)
    block = python_blocks()[0]
    assert "lake.revert(b.name, c.id)" in block
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md python block 0", "exec"), namespace)
    lake, b, c = namespace["lake"], namespace["b"], namespace["c"]
    assert c.message == "train v1"  # type: ignore[attr-defined]
    assert lake.read_bytes("models/clf.bin", ref=c.id[:12]) == b"weights"  # type: ignore[attr-defined]
    assert not lake.exists("models/clf.bin", b.name)  # type: ignore[attr-defined]
    assert lake.exists("step.json", b.name)  # type: ignore[attr-defined]
