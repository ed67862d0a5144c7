"""How ``--help`` reads: no value placeholder after a flag, and prose reflowed to the width.

typer's rich help (0.2x with click 8.2+) prints every option's type, a flag's ``<bool>`` too,
although a flag takes no value (its plain help leaves flags out); and it keeps the single line
breaks of docstrings, so paragraphs wrapped at 100 columns in the source come out broken
mid-sentence, and a command's summary in a group's list spills onto a second row. Importing
this module makes the rich help leave flags' types out and join a paragraph's lines, for every
command of the app (a paragraph with indented or bulleted lines, or marked ``\\b``, is kept).
"""

from __future__ import annotations

import inspect
from typing import Any

from typer import rich_utils
from typer.core import TyperOption

_display_type_rich = TyperOption.display_type_rich
_make_command_help = rich_utils._make_command_help


def _display_type_rich_without_flags(self: TyperOption, ctx: Any) -> str | None:
    """The option's type as rich help shows it; None (nothing shown) for flags and counters."""
    if self.is_flag or self.count:
        return None
    return _display_type_rich(self, ctx)


def reflow(paragraph: str) -> str:
    """``paragraph`` with its lines joined by spaces, unless it is laid out on purpose (a
    ``\\b`` marker, or a line that starts indented or with a bullet)."""
    lines = paragraph.split("\n")
    if paragraph.startswith("\b") or any(line[:1] in (" ", "\t", "-", "*") for line in lines[1:]):
        return paragraph
    return " ".join(line.strip() for line in lines)


def _fix_linebreaks(paragraphs: list[str], markup_mode: Any) -> str:
    return "\n\n".join(reflow(p) for p in paragraphs)


def _command_help(*, help_text: str, markup_mode: Any) -> Any:
    first, *_ = inspect.cleandoc(help_text).split("\n\n")
    return _make_command_help(help_text=reflow(first), markup_mode=markup_mode)


TyperOption.display_type_rich = _display_type_rich_without_flags  # type: ignore[method-assign]
rich_utils._fix_linebreaks = _fix_linebreaks
rich_utils._make_command_help = _command_help
