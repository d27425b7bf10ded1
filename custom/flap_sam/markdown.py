"""Markdown tables, as every report, summary and benchmark of the package prints them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], float_format: str | None = None) -> str:
    """A Markdown table of ``rows`` under ``header`` (no trailing newline).

    Args:
        float_format: format of float cells (e.g. ``".4f"``); None: ``str`` like every other cell.
    """
    def cell(value) -> str:
        return format(value, float_format) if float_format and isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def records_table(records: Sequence[dict], float_format: str = ".4f") -> str:
    """A Markdown table of dicts with the same keys: the keys are the header."""
    columns = list(records[0])
    return markdown_table(columns, ([r[c] for c in columns] for r in records), float_format)
