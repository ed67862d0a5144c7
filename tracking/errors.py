"""Errors of the tracking layer, rooted in the store's one hierarchy.

``store/errors.py`` belongs to the store; these subclasses add what only tracking raises, so
``except store.errors.StoreError`` still catches everything flowlake raises.
"""

from __future__ import annotations

from store.errors import InvalidArgumentError, NotFoundError, StoreError


class TrackingError(StoreError):
    """Root of the errors only the tracking layer raises."""


class QueryError(TrackingError, ValueError):
    """A SQL query failed: bad syntax, an unknown column, or a statement that is not a query.

    The message is DuckDB's own, without a traceback into DuckDB.
    """


class RunNotFoundError(TrackingError, NotFoundError):
    """No run with that id in any namespace this handle can read."""


class RunStateError(TrackingError, RuntimeError):
    """The run cannot do that in its current state (for example logging after it ended)."""


class ParamChangedError(TrackingError, ValueError):
    """A parameter was logged again with a different value; parameters are write-once."""


class InvalidMetricError(TrackingError, InvalidArgumentError):
    """A metric point was refused when logged: a bad key, value, step or timestamp."""


class SkippedRunFileWarning(UserWarning):
    """A query skipped run files it could not decode; the ``problems`` view lists them."""


class SkippedCodeFileWarning(UserWarning):
    """A code snapshot left files out (names that are not valid UTF-8); the snapshot lists them."""
