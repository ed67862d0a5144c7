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

# Private parts of typer: a typer without them keeps its own help rather than failing to start.
_display_type_rich = getattr(TyperOption, "display_type_rich", None)
_make_command_help = getattr(rich_utils, "_make_command_help", None)


def _display_type_rich_without_flags(self: TyperOption, ctx: Any) -> str | None:
    """The option's type as rich help shows it; None (nothing shown) for flags and counters."""
    if self.is_flag or self.count:
        return None
    return _display_type_rich(self, ctx)  # type: ignore[misc]


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
    return _make_command_help(help_text=reflow(first), markup_mode=markup_mode)  # type: ignore[misc]


if _display_type_rich is not None:
    TyperOption.display_type_rich = _display_type_rich_without_flags  # type: ignore[method-assign]
if _make_command_help is not None and hasattr(rich_utils, "_fix_linebreaks"):
    rich_utils._fix_linebreaks = _fix_linebreaks
    rich_utils._make_command_help = _command_help
