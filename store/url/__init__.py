"""``flowlake://<ref>/<path>`` URLs for pandas, pyarrow, DuckDB, Dask and Ray, through fsspec.

Registered with fsspec through the ``fsspec.specs`` entry point, so no import is needed:

>>> import pandas as pd
>>> pd.read_parquet("flowlake://main/data/train.parquet",
...                 storage_options={"lake": "./lake"})  # doctest: +SKIP

See ``docs/fsspec.md``.
"""

from store.url.address import LakeURL
from store.url.filesystem import FlowlakeFileSystem
from store.url.transaction import FlowlakeTransaction

__all__ = ["FlowlakeFileSystem", "FlowlakeTransaction", "LakeURL"]
