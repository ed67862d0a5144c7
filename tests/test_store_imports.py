"""``import store`` is light: the package loads its modules (pyarrow, numpy, the backends, the
policy) when a name needs them, and every public name still resolves as before.

Each check runs in a fresh interpreter, since this test session has imported everything.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import store


def _fresh(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-P", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_store_or_its_errors_loads_neither_pyarrow_nor_numpy() -> None:
    out = _fresh(
        """
        import sys
        import store, store.errors
        print(sorted({"pyarrow", "numpy", "duckdb", "store.lake"} & set(sys.modules)))
        """
    )
    assert out == "[]"


def test_every_public_name_resolves_and_store_open_works(tmp_path: Path) -> None:
    out = _fresh(
        f"""
        import store
        missing = [n for n in store.__all__ if not hasattr(store, n)]
        from store import Branch, Lake, InvalidArgumentError, BranchNotFoundError
        lake = store.open({str(tmp_path / "lake")!r})
        assert isinstance(lake, store.Lake) and isinstance(lake, Lake)
        assert isinstance(lake.branch("x"), Branch)
        assert issubclass(store.StoreError, Exception) and store.lake.Lake is Lake
        print(missing)
        """
    )
    assert out == "[]"


@pytest.mark.parametrize(
    "first",
    ["import store.branch", "from store.branch import Branch", "import store.default_lake", ""],
)
def test_store_branch_stays_the_function_whichever_module_loads_first(first: str) -> None:
    out = _fresh(
        f"""
        {first}
        import store
        before = store.branch
        import store.branch
        from store.branch import Branch
        print(callable(before) and store.branch is before and before.__module__)
        """
    )
    assert out == "store.default_lake"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        store.nope  # noqa: B018
    assert not hasattr(store, "nope")
