"""A small table type shared by every analysis: rows of plain values, written as CSV, HTML or a W&B table."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    if value is None:
        return ""
    return str(value)


@dataclass
class Table:
    """``rows`` are lists in ``columns`` order. ``name`` is the file stem and W&B key; ``note`` says how to read it."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""

    def __post_init__(self) -> None:
        bad = [r for r in self.rows if len(r) != len(self.columns)]
        if bad:
            raise ValueError(f"table {self.name}: row {bad[0]} does not have the {len(self.columns)} columns")

    @classmethod
    def from_records(cls, name: str, title: str, records: Iterable[dict[str, Any]],
                     columns: Sequence[str] | None = None, note: str = "") -> "Table":
        records = list(records)
        if columns is None:
            columns = list(dict.fromkeys(k for r in records for k in r))
        return cls(name, title, list(columns), [[r.get(c) for c in columns] for r in records], note)

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def to_html(self, max_rows: int = 400) -> str:
        """An HTML ``<table>`` (no external resources); long tables are cut with a note (the CSV holds them all)."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for row in self.rows[:max_rows]:
            cells = "".join(
                f'<td class="num">{html.escape(_cell(v))}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
                else f"<td>{html.escape(_cell(v))}</td>" for v in row)
            body.append(f"<tr>{cells}</tr>")
        more = (f'<p class="note">{len(self.rows) - max_rows} more rows in {html.escape(self.name)}.csv</p>'
                if len(self.rows) > max_rows else "")
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return (f'<div class="table" id="table-{html.escape(self.name)}"><h4>{html.escape(self.title)}</h4>{note}'
                f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}</div>")

    def to_wandb(self):
        import wandb

        return wandb.Table(columns=list(self.columns), data=[[_plain(v) for v in row] for row in self.rows])


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
