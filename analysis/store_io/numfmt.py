"""The one number format of everything a person reads: Markdown tables, the HTML report, captions and
the terminal.

* counts (Python / numpy integers, bools) print in full: ``1797``;
* other numbers get :data:`SIG` significant digits, without trailing zeros: ``0.6861``, ``99.44``,
  ``1235``, ``1.235e+05`` (``%g``: scientific only outside ``[1e-4, 1e4)``);
* p-values always print in scientific notation with 3 significant digits: ``1.04e-167``, ``3.20e-02``;
* NaN and None print as ``N/A``, infinities as ``inf`` / ``-inf``.

CSV files keep full precision (they are data); only their readable views go through here.
:func:`format_table` (terminal) and :func:`to_markdown` (``tables/*.md``) lay a DataFrame out in it.
It sits low (``store_io``) because every layer above writes text a person reads: the studies' tables
as much as the report's.
"""

from __future__ import annotations

import math
import re
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: this module imports nothing heavy
    import pandas as pd

__all__ = ["SIG", "fmt", "fmt_p", "is_p_column", "max_significant_digits", "format_table", "to_markdown"]

#: Significant digits of every non-integer number shown to a person.
SIG = 4
#: Significant digits of a p-value (always scientific).
P_SIG = 3

_P_COLUMN = re.compile(r"^(p|p[ _-]?value|pvalue)(\b| )|(^| )p( |$)", re.IGNORECASE)


def fmt(v: Any, *, p_value: bool = False) -> str:
    """``v`` as text in the report's one number format (see the module docstring).

    Parameters
    ----------
    v : any
        A number (Python or numpy) or anything else (returned as ``str(v)``).
    p_value : bool
        ``v`` is a p-value: scientific notation, 3 significant digits.
    """
    if v is None:
        return "N/A"
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return str(bool(v))
    if isinstance(v, Integral):
        return str(int(v))
    if isinstance(v, Real):
        x = float(v)
        if math.isnan(x):
            return "N/A"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if p_value:
            return fmt_p(x)
        return f"{x:.{SIG}g}"
    return str(v)


def fmt_p(p: float) -> str:
    """A p-value in scientific notation with :data:`P_SIG` significant digits (``N/A`` for NaN)."""
    p = float(p)
    if math.isnan(p):
        return "N/A"
    return f"{p:.{P_SIG - 1}e}"


def is_p_column(name: Any) -> bool:
    """Whether a column named ``name`` holds p-values (``p``, ``p privacy``, ``p-value``, ``rho / p``)."""
    return bool(_P_COLUMN.search(str(name).strip()))


# A decimal number with a fractional part or an exponent (integers such as counts do not match).
_NUMBER = re.compile(r"(?<![\w.])[-+]?(\d+\.\d+|\d+(?=[eE]))([eE][-+]?\d+)?(?![\w.])")


def max_significant_digits(text: str) -> tuple[int, str]:
    """The most significant digits of any non-integer number in ``text``, and that number.

    Integers (counts, years, sizes) are not numbers in this sense: only numbers with a decimal
    point or an exponent count. Leading zeros are not significant; trailing zeros after the point
    are (``0.6800`` has 4). Returns ``(0, "")`` when ``text`` has no such number.
    """
    best, which = 0, ""
    for m in _NUMBER.finditer(text):
        mant = m.group(1)
        digits = mant.replace(".", "").lstrip("0")
        n = len(digits) if digits else 1
        if n > best:
            best, which = n, m.group(0)
    return best, which


# --- tables --------------------------------------------------------------------------------------

def _cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = [str(df.index.name or "")] + [str(c) for c in df.columns]
    p_cols = [is_p_column(c) for c in df.columns]
    rows = [[str(i)] + [fmt(v, p_value=pc) for v, pc in zip(row, p_cols)]
            for i, row in zip(df.index, df.itertuples(index=False))]
    return head, rows


def format_table(df: pd.DataFrame) -> str:
    """A DataFrame as an aligned plain-text table for the terminal (index as the first column)."""
    head, rows = _cells(df)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows)])


def to_markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (no dependency on ``tabulate``)."""
    head, rows = _cells(df)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(head) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"
