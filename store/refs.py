"""User-facing refs: ``<branch>``, ``<namespace>/<branch>``, tags, commit ids, and ``ref~N``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from store.errors import InvalidNameError

_ANCESTRY = re.compile(r"^(?P<base>.+?)(?P<steps>(~\d*)+)$")


@dataclass(frozen=True)
class RefSpec:
    """A parsed ref: the base name and how many first-parent steps back from it."""

    base: str
    back: int = 0

    @classmethod
    def parse(cls, text: str) -> RefSpec:
        """Parse ``name``, ``name~`` (one back) or ``name~N`` (chains add up: ``a~2~1`` = 3).

        Raises:
            InvalidNameError: empty, not a string, or holds NUL / whitespace.
        """
        if not isinstance(text, str) or not text:
            raise InvalidNameError("ref must be a non-empty string")
        if any(c.isspace() or ord(c) < 0x20 for c in text):
            raise InvalidNameError(f"invalid ref {text!r}: whitespace or control characters")
        match = _ANCESTRY.match(text)
        if not match:
            return cls(text)
        steps = match.group("steps").split("~")[1:]
        return cls(match.group("base"), sum(int(s) if s else 1 for s in steps))
