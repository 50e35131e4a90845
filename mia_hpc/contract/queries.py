"""Queries: the label-preserving views under which each sample's logits are recorded.

Query 0 is always the identity. Then, for d = 1..shift, translations by +-d pixels in x and in y
(reflect padding, as in the LiRA reference inference code), and with ``mirror`` the horizontal
mirror of each of those (not for digits, whose mirror changes meaning).
"""

from __future__ import annotations

Query = tuple[str, int, int, bool]  # (name, dx, dy, mirror)


def make_queries(shift: int, mirror: bool) -> list[Query]:
    """The query list for a spec's ``[queries]`` table."""
    base: list[Query] = [("id", 0, 0, False)]
    for d in range(1, shift + 1):
        base += [(f"x+{d}", d, 0, False), (f"x-{d}", -d, 0, False), (f"y+{d}", 0, d, False), (f"y-{d}", 0, -d, False)]
    if mirror:
        base += [("m" if name == "id" else f"m,{name}", dx, dy, True) for name, dx, dy, _ in base]
    return base
