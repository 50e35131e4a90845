"""How much of a memory-mapped file is resident in this process: the tests of code that gives pages back."""

from __future__ import annotations


def resident_bytes_of(path) -> int:
    """Resident bytes of this process' mappings of ``path`` (Linux ``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
                inside = len(head) >= 6 and head[5] == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total
