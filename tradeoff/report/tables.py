"""Terminal tables and number formatting: the project's one table formatter and cost units.

`format_table` (like fvcore's `flop_count_table`) lays out every command's summary;
`accuracy_text`, `share_text` and `mflops_text` are the one way each figure is shown.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence


# --------------------------------------------------------------------------- tables
def format_table(
    rows: Iterable[Sequence],
    headers: Sequence[str],
    *,
    title: str | None = None,
    float_format: str = "{:.4g}",
) -> str:
    """A plain monospace table: strings left-aligned, numbers right-aligned.

    Args:
        rows: each a sequence of cells (str, int, float or None) as long as `headers`.
        headers: column names.
        title: optional line printed above the table.
        float_format: how floats are shown (ints are shown in full; None as "-").

    Returns:
        The table as one string without a trailing newline.

    Raises:
        ValueError: if a row's length differs from the number of headers.
    """
    headers = [str(h) for h in headers]
    cells: list[list[str]] = []
    numeric: list[list[bool]] = []
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(headers):
            raise ValueError(f"format_table: row {i} has {len(row)} cells; expected {len(headers)} (one per header)")
        cells.append([_cell(value, float_format) for value in row])
        numeric.append([_is_number(value) for value in row])
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    # A column whose every cell is a number (or reads as one: "1.21x", "35.0%",
    # "0.7570 [0.7452, 0.7684]") is right-aligned, header included.
    right = [
        bool(cells) and all(numeric[r][j] or cells[r][j] == "-" or _NUMBER_LIKE.match(cells[r][j]) for r in range(len(cells)))
        for j in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(headers))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in cells)
    return "\n".join(out)


_NUMBER_LIKE = re.compile(r"^[-+]?(\d|\.\d|inf|nan)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or _is_numpy_number(value)


def _is_numpy_number(value) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iuf"


def _cell(value, float_format: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_numpy_number(value):
        value = value.item()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


def accuracy_text(accuracy: float) -> str:
    """The one display convention for accuracies: a fraction with four decimals (0.9889), as
    --target-acc takes it and the JSON/CSV files store it. Shares of samples are shown as
    percentages (`share_text`); --max-drop alone is in percentage points."""
    return f"{float(accuracy):.4f}"


def share_text(fraction: float) -> str:
    """A share of samples (where they leave) as a percentage: 75.6%."""
    return f"{100 * float(fraction):.1f}%"


def mflops_text(flops: float) -> str:
    """A cost for display, in MFLOPs with a fixed number of decimals per magnitude
    (so a column of them lines up): 466.0, 12.35; below one MFLOP four significant digits
    (0.1234, 0.0001235), so a small model never shows 0.00."""
    m = float(flops) / 1e6
    if abs(m) >= 100:
        return f"{m:.1f}"
    if abs(m) >= 1:
        return f"{m:.2f}"
    return f"{m:.4g}"
