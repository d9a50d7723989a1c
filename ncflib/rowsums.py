"""Sums of sparse rows, grouped, without a sort: the kernel behind RP3beta's fit and its scores at catalogue scale.

Both a walk row of RP3beta (an item's users' rows of X, each weighted) and a user's scores (their items' rows of
neighbours) are sums of sparse rows. Coalescing such sums by sorting costs a sort of every entry; here the entries
are added into a dense buffer of a few groups' rows (``RowSums``), each distinct (group, column) read back once, and
the buffer cleared where it was written, so a pass costs the entries it adds, never a group's full width.

    sums = RowSums(width=num_items)
    groups, columns, values = sums(groups, columns, values)   # distinct pairs, grouped as given
    rows, places, columns, values = grouped_top(groups, columns, values, sums.groups, keep=200)
"""

import math
import time

import torch

CAPACITY = 2**25  # buffer entries (groups x width) of one pass: 256 MiB of float64 sums, 256 MiB of owners


class RowSums:
    """Adds entries (group, column, value) into a buffer of ``groups`` rows of ``width`` columns and returns each
    distinct (group, column) once with its sum. ``groups`` (rows per pass) is ``CAPACITY // width`` (at least 1), or
    ``groups`` when fewer are needed."""

    def __init__(self, width, groups=None, dtype=torch.float64, device="cpu"):
        self.width = int(width)
        self.groups = max(1, min(CAPACITY // self.width, groups or CAPACITY))
        size = self.groups * self.width
        self.total = torch.zeros(size, dtype=dtype, device=device)
        self.owner = torch.zeros(size, dtype=torch.int64, device=device)

    def __call__(self, groups, columns, values):
        """(groups, columns, sums) [m] of the entries' distinct (group, column) pairs, groups in
        [0, self.groups). Entries given grouped (each group's entries together) come back grouped the same way."""
        flat = groups * self.width + columns
        self.total.index_add_(0, flat, values.to(self.total.dtype))
        order = torch.arange(flat.numel(), device=flat.device)
        self.owner[flat] = order  # of a position's entries one is written last: that one stands for the position
        first = self.owner[flat] == order
        flat = flat[first]
        sums = self.total[flat]
        self.total[flat] = 0.0  # cleared where written: the buffer is zero again for the next pass
        return groups[first], columns[first], sums


def ragged(starts, lengths):
    """(owner of each element, flat positions) of the slices ``[starts[j], starts[j] + lengths[j])`` of a flat
    array, slice after slice."""
    owners = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(owners.numel(), device=owners.device) + (starts - first)[owners]
    return owners, positions


def grouped_top(groups, columns, values, num_groups, keep):
    """(rows, places, columns, values) [n]: each group's ``keep`` largest values, best first, group ``rows[n]``
    keeping ``columns[n]`` in place ``places[n]``; a group with fewer entries keeps them all. Entries must be given
    grouped by group, groups ascending (as ``RowSums`` returns entries given that way)."""
    counts = torch.bincount(groups, minlength=num_groups)
    if groups.numel() == 0:
        empty = groups.new_zeros(0)
        return empty, empty, empty, values.new_zeros(0)
    starts = torch.cumsum(counts, 0) - counts
    place = torch.arange(groups.numel(), device=groups.device) - starts[groups]
    padded = torch.full((num_groups, int(counts.max())), -math.inf, dtype=values.dtype, device=values.device)
    padded[groups, place] = values
    best, where = padded.topk(min(keep, padded.shape[1]), dim=1)
    kept = best > -math.inf
    rows = torch.arange(num_groups, device=groups.device)[:, None].expand_as(where)[kept]
    places = torch.arange(where.shape[1], device=groups.device).expand_as(where)[kept]
    return rows, places, columns[starts[rows] + where[kept]], best[kept]


def entry_seconds(width, device, count=2**20):
    """Seconds one entry of a ``RowSums`` pass takes here, over rows of ``width`` columns: a pass of ``count``
    random entries, timed after one that pays for start-up (a few tens of milliseconds in all)."""
    import time

    sums = RowSums(width, groups=max(1, min(64, count // 16)), device=device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    groups = torch.sort(torch.randint(0, sums.groups, (count,), generator=generator)).values.to(device)
    columns = torch.randint(0, int(width), (count,), generator=generator).to(device)
    values = torch.rand(count, generator=generator, dtype=torch.float64).to(device)
    sums(groups, columns, values)
    started = time.perf_counter()
    sums(groups, columns, values)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / count
