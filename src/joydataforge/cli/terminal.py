"""What the commands print on a terminal: plain text in tables that fit 80 columns.

Why plain: the values printed are data (step counters such as ``gated:label:药品``, model names, file
paths, labels), and rich reads ``:label:`` as an emoji code and ``[b]`` as markup, so a counter came out as
``gated🏷药品``. Every cell is therefore a :class:`rich.text.Text` (never parsed), and consoles are made with
``emoji=False`` and ``highlight=False``.

Why 80 columns: a table with many columns on a narrow terminal squeezes every cell to a few letters with
an ellipsis. Tables here have a name column and one column of ``key value`` pairs that wraps between pairs,
so every value stays whole at any width; ``--json`` gives the same data to programs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

import click
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def make_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console that prints values as they are: no emoji codes, no markup guessing, no colouring of numbers."""
    return Console(stderr=stderr, width=width, emoji=False, highlight=False)


def plain(value: Any) -> Text:
    """A table cell that rich prints literally (``[x]`` and ``:label:`` stay as written)."""
    return value if isinstance(value, Text) else Text(str(value))


class Pairs:
    """``key value · key value ...`` as one table cell that wraps between pairs, never inside one.

    Packed into lines at render time, when the cell's width is known; a pair wider than the whole cell (a
    long URL) is folded, never cut. Plain text throughout: nothing in a pair is read as markup or emoji.
    """

    def __init__(self, pairs: Iterable[str], sep: str = " · "):
        self.pairs = [str(pair) for pair in pairs]
        self.sep = sep

    def _lines(self, width: int) -> list[str]:
        lines: list[str] = []
        line = ""
        for pair in self.pairs:
            joined = f"{line}{self.sep}{pair}" if line else pair
            if line and cell_len(joined) > width:
                trailing = self.sep.rstrip()  # shows the list goes on, where it fits on the line
                lines.append(line + trailing if cell_len(line + trailing) <= width else line)
                line = pair
            else:
                line = joined
        if line or not lines:
            lines.append(line)
        return lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text("\n".join(self._lines(options.max_width)), overflow="fold")

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        whole = cell_len(self.sep.join(self.pairs))
        widest = max((cell_len(pair) for pair in self.pairs), default=0)
        return Measurement(min(widest, 24), whole).clamp(max_width=options.max_width)

    def __str__(self) -> str:
        return self.sep.join(self.pairs)


def pairs_text(items: Iterable[tuple[str, Any]], sep: str = " · ") -> Pairs:
    """The cell of ``(key, value)`` pairs (a pair with an empty key shows its value alone)."""
    return Pairs((f"{key} {value}" if key else str(value) for key, value in items), sep)


def name_table(title: str, first: str = "name", second: str = "") -> Table:
    """Two columns: a name that folds when it must (never cut with an ellipsis) and a wrapping details column."""
    table = Table(title=title, title_justify="left", show_header=bool(second), expand=False)
    table.add_column(first, overflow="fold", max_width=32)
    table.add_column(second, overflow="fold")
    return table


def number(value: float | int) -> str:
    """``2,000,000`` for a whole number (also when stored as a float), ``1.5`` otherwise."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,}"


def echo_json(value: Any) -> None:
    """``--json``: the list as one JSON document on stdout (UTF-8, Chinese unescaped)."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def terminal_width() -> int | None:
    """The terminal's width; logs and CI (not a terminal) get 120 so that names are not wrapped needlessly."""
    return None if sys.stderr.isatty() else 120
