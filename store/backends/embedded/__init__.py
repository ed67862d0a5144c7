"""The embedded backend: content-addressed objects on fsspec, refs and staging in SQLite."""
