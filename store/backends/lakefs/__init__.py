"""The lakeFS backend (needs the ``lakefs`` extra): see :mod:`store.backends.lakefs.backend`."""
