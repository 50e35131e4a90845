"""The one number format of everything a person reads: Markdown tables, the HTML report, captions and
the terminal.

* counts (Python / numpy integers, bools) print in full: ``1797``;
* other numbers get :data:`SIG` significant digits, without trailing zeros: ``0.6861``, ``99.44``,
  ``1235``, ``1.235e+05`` (``%g``: scientific only outside ``[1e-4, 1e4)``);
* p-values always print in scientific notation with 3 significant digits: ``1.04e-167``, ``3.20e-02``;
* NaN and None print as ``N/A``, infinities as ``inf`` / ``-inf``.

CSV files keep full precision (they are data); only their readable views go through here.
"""

from __future__ import annotations

import math
import re
from numbers import Integral, Real
from typing import Any

__all__ = ["SIG", "fmt", "fmt_p", "is_p_column", "max_significant_digits"]

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
