"""Huge pages for benchmark buffers, and how much of a tensor they back."""

from __future__ import annotations

import math
from pathlib import Path

HUGE_PAGE = 2 << 20


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode: always, madvise or never."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    return text.split("[")[1].split("]")[0] if "[" in text else text.strip()


def hugepage_empty(torch, count: int, dtype):
    """An uninitialised tensor of `count` elements on 2 MiB boundaries,
    madvise(MADV_HUGEPAGE)d before anything touches it, so the kernel backs
    it with transparent huge pages as it faults it in (THP mode 'always' or
    'madvise'), as an application allocating its buffers that way would get.
    Its own anonymous mapping: malloc may serve even large requests from
    pages it touched before (glibc raises its mmap threshold after frees)."""
    import mmap

    nbytes = count * torch.empty((), dtype=dtype).element_size()
    length = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    raw = mmap.mmap(-1, length + HUGE_PAGE, flags=mmap.MAP_PRIVATE)
    base = torch.frombuffer(raw, dtype=torch.uint8)  # keeps the mapping alive
    start = -base.data_ptr() % HUGE_PAGE
    try:
        raw.madvise(mmap.MADV_HUGEPAGE, start, length)
    except OSError as e:
        raise OSError(e.errno, f"madvise(MADV_HUGEPAGE) failed: {e.strerror}") from None
    return base[start:start + nbytes].view(dtype)


def smaps_fields(addr: int) -> dict:
    """The /proc/self/smaps entry of the mapping holding `addr`: its field
    lines as name -> rest of the line ("Size" -> "12288 kB", "VmFlags" ->
    "rd wr ... hg"); empty when no mapping holds it."""
    fields, inside = {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and not head.endswith(":"):
            if inside:
                break
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside:
            fields[head.rstrip(":")] = line[len(head):].strip()
    return fields


def huge_page_fraction(tensor) -> float:
    """How much of the mapping holding `tensor`'s first whole 2 MiB page
    (its start, if it has none) huge pages back: AnonHugePages / Size of
    that VMA, from /proc/self/smaps.  madvise splits a mapping at the
    advised range, so this is the advised part when there is one."""
    start = tensor.data_ptr()
    aligned = -(-start // HUGE_PAGE) * HUGE_PAGE
    end = start + tensor.numel() * tensor.element_size()
    fields = smaps_fields(aligned if aligned + HUGE_PAGE <= end else start)
    if "Size" not in fields or "AnonHugePages" not in fields:
        return math.nan
    size = int(fields["Size"].split()[0])
    return int(fields["AnonHugePages"].split()[0]) / size if size else math.nan


