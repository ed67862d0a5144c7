"""``flowlake://`` filesystems behave alike on every backend (the ``lake`` fixture)."""

from __future__ import annotations

import fsspec
import pytest
from conftest import LakeAccess

import store


def test_a_closed_filesystem_is_not_handed_out_again(
    lake: store.Lake, lake_access: LakeAccess
) -> None:
    fs = fsspec.filesystem("flowlake", lake=lake_access.location)
    assert fs.ls("flowlake://main/") == []
    fs.close()
    with pytest.raises(store.LakeClosedError):
        fs.ls("flowlake://main/")
    again = fsspec.filesystem("flowlake", lake=lake_access.location)
    assert again is not fs
    assert again.ls("flowlake://main/") == []
    again.close()
