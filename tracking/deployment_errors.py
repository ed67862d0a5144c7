"""Errors only deployments raise, rooted in the tracking hierarchy (``TrackingError``)."""

from __future__ import annotations

from store.errors import NotFoundError
from tracking.errors import TrackingError


class DeploymentNotFoundError(TrackingError, NotFoundError):
    """No deployment of that name in this lake."""


class DeploymentStateError(TrackingError, RuntimeError):
    """The deployment cannot do that in its current state (logging to a retired one, say)."""


class NoOverlapError(TrackingError, ValueError):
    """Two deployments were never live at the same time, so there is nothing to compare."""


class GateClosedError(TrackingError, RuntimeError):
    """A promotion gate refused: the comparison shows a regression or cannot be trusted.

    Attributes:
        reasons: why the gate is closed, one sentence each.
    """

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons
