"""Errors as people see them: backend branch names in messages become user-facing names.

Backends speak in backend branch names (``u-avery__exp``); :class:`UserFacingBackend` wraps a
backend so every error it raises, also from inside a streamed listing, names ``user:avery/exp``.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

from store.errors import StoreError
from store.names import user_facing


def _rename(exc: StoreError) -> None:
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (user_facing(exc.args[0]), *exc.args[1:])


def _translated_iter(it: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from it
    except StoreError as exc:
        _rename(exc)
        raise


class UserFacingBackend:
    """A transparent proxy over a backend that rewrites branch names in error messages."""

    def __init__(self, backend: Any) -> None:
        object.__setattr__(self, "_inner", backend)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value) or name.startswith("__"):
            return value
        return self._wrap(value)

    @staticmethod
    def _wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = method(*args, **kwargs)
            except StoreError as exc:
                _rename(exc)
                raise
            if isinstance(result, types.GeneratorType):
                return _translated_iter(result)
            return result

        return call
