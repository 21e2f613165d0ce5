"""Blocks for the network: cores around the screen's candidate clusters, read with a halo.

As in :mod:`stardist.big`, a block is a *core* (``own``: it keeps the detections whose centre lies
inside) read with the network's receptive field as halo; unlike StarDist's fixed cover of the
whole volume, blocks are placed where the screen found candidates (:func:`plan_blocks`), so empty
space never reaches the network and a cluster is read once. All sizes px, axis order z, y, x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from kt_stardist.defaults import LABEL_RADIUS_UM, VOXEL_SIZE_UM

__all__ = ["Block", "plan_blocks", "owns", "block_geometry", "CLUSTER_CELL_PX", "MAX_CLUSTERS"]


@dataclass
class Block:
    """One block: ``read`` slices (z, y, x) sent to the network and the ``own`` interval per axis,
    ``[lo, hi)`` in px: a detection belongs to this block only if its centre lies inside."""

    read: tuple
    own: tuple


#: coarse cell (px, z, y, x) in which screen candidates are grouped into clusters
CLUSTER_CELL_PX = (8, 32, 32)

#: most clusters the block planner merges pairwise (more: the cells are doubled until fewer)
MAX_CLUSTERS = 256


def _candidates(mask):
    """``(N, 3)`` int coordinates of a dense bool mask or a :class:`~kt_stardist.outofcore.SparseMask`."""
    if hasattr(mask, "coords"):
        return np.asarray(mask.coords)
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        return np.argwhere(m)
    rows = np.argwhere(m.any(axis=2))  # (z, y) rows holding a candidate: a sparse mask reads fast
    i, x = np.nonzero(m[rows[:, 0], rows[:, 1]])
    return np.column_stack([rows[i, 0], rows[i, 1], x])  # np.argwhere's order


def plan_blocks(mask, block_size, min_overlap, context, grid=(1, 1, 1), cell_px=CLUSTER_CELL_PX):
    """Blocks that cover every screen candidate of a ``(Z, Y, X)`` mask, and nothing else.

    As in :mod:`stardist.big`, a block is a *core* (``own``: it keeps the detections whose
    centre lies inside) read with ``context`` px of halo (the network's receptive field). Unlike
    StarDist's cover, which tiles the whole volume at fixed positions (a spot cluster straddling
    tiles is then read several times, each with its halo), blocks are placed where the screen
    found candidates:

    1. clusters: candidates in connected occupied ``cell_px`` cells (cells doubled while there
       are more than :data:`MAX_CLUSTERS` clusters); core = their bounding box widened by
       ``min_overlap // 2`` px (an object owned by the block lies within that of a candidate);
    2. two cores are merged when they overlap (cores stay disjoint, so each detection has one
       owner) or when one read region is not larger than the two (e.g. two nearby clusters whose
       halos overlap), as long as the read region stays within ``block_size``;
    3. a core whose read region exceeds ``block_size`` is split into equal parts along the axes
       that need it; parts without candidates within ``min_overlap // 2`` px are dropped.

    Read regions are clipped at the volume and start on the ``grid``; a read never exceeds
    ``block_size`` (except along an axis where the core plus halo alone is larger). All sizes px.

    Returns
    -------
    list of ``(Block, read)``: ``read`` the slices actually predicted (the block's read region cut
    down to its candidates' bounding box plus margin and halo, see :func:`_trimmed_read`).
    """
    shape = np.array(mask.shape)
    c = _candidates(mask)
    if len(c) == 0:
        return []
    margin = np.array([int(o) // 2 for o in min_overlap])
    ctx, bsz = np.array(context, int), np.array(block_size, int)

    def read_size(lo, hi):
        return np.minimum(hi + ctx, shape) - np.maximum(lo - ctx, 0)

    # 1. clusters of candidates in connected coarse cells (coarser while there are too many:
    #    scattered noise candidates must not make the pairwise merging below quadratic in them)
    cell = np.array(cell_px)
    while True:
        idx = c // cell
        occupied = np.zeros(tuple(-(-shape // cell)), bool)
        occupied[tuple(idx.T)] = True
        lab, n_clusters = ndimage.label(occupied, np.ones((3, 3, 3), bool))
        if n_clusters <= MAX_CLUSTERS or np.all(cell >= shape):
            break
        cell = np.minimum(cell * 2, np.maximum(shape, 1))
    cid = lab[tuple(idx.T)]
    order = np.argsort(cid, kind="stable")
    groups = np.split(c[order], np.flatnonzero(np.diff(cid[order])) + 1)
    cores = [(np.maximum(g.min(0) - margin, 0), np.minimum(g.max(0) + 1 + margin, shape)) for g in groups]

    # 2. merge: overlapping cores always, others when that reads no more voxels (all pairs at once)
    lo, hi = np.array([k[0] for k in cores]), np.array([k[1] for k in cores])

    def volume(lo, hi):
        return np.prod(read_size(lo, hi).astype(np.float64), axis=-1)

    while len(lo) > 1:
        ulo, uhi = np.minimum(lo[:, None], lo[None]), np.maximum(hi[:, None], hi[None])
        overlap = np.all(lo[:, None] < hi[None], -1) & np.all(lo[None] < hi[:, None], -1)
        v = volume(lo, hi)
        gain = v[:, None] + v[None] - volume(ulo, uhi)
        ok = overlap | ((gain >= 0) & np.all(read_size(ulo, uhi) <= bsz, -1))
        ok &= np.triu(np.ones(ok.shape, bool), 1)
        if not ok.any():
            break
        i, j = np.unravel_index(np.argmax(np.where(ok, gain + 1e30 * overlap, -np.inf)), ok.shape)
        lo[i], hi[i] = ulo[i, j], uhi[i, j]
        lo, hi = np.delete(lo, j, 0), np.delete(hi, j, 0)
    cores = list(zip(lo, hi))

    # 3. split cores whose read region is too large; trim every part to its candidates
    out = []
    for lo, hi in sorted(cores, key=lambda k: tuple(k[0])):
        edges = [_split_axis(int(a), int(b), int(cx), int(n), int(bs))
                 for a, b, cx, n, bs in zip(lo, hi, ctx, shape, bsz)]
        for iz in range(len(edges[0]) - 1):
            for iy in range(len(edges[1]) - 1):
                for ix in range(len(edges[2]) - 1):
                    own = tuple((int(e[k]), int(e[k + 1])) for e, k in zip(edges, (iz, iy, ix)))
                    read = tuple(slice(max(a - cx, 0), min(b + cx, n)) for (a, b), cx, n in zip(own, ctx, shape))
                    block = Block(read=read, own=own)
                    r = _trimmed_read(mask, block, tuple(margin), tuple(ctx), grid)
                    if r is not None:
                        out.append((block, r))
    return out


def _split_axis(lo, hi, context, size, block):
    """Edges of the fewest equal parts of ``[lo, hi)`` whose read regions (part + ``context``,
    clipped to ``[0, size)``) are at most ``block`` px (or a part is a single px)."""
    for k in range(1, hi - lo + 1):
        e = np.linspace(lo, hi, k + 1).round().astype(int)
        if all(min(b + context, size) - max(a - context, 0) <= block for a, b in zip(e[:-1], e[1:])):
            return e
    return np.arange(lo, hi + 1)


def _trimmed_read(mask, block, margin, context, grid):
    """Read slices of ``block`` cut down to its screen candidates, or None when it has none.

    Candidates are looked for in the block's owned region widened by ``margin`` px (an object
    owned by the block lies within that); the read region is their bounding box widened by
    ``margin + context`` px (the network's receptive field), start aligned to the grid, and
    never larger than the block's own read region.
    """
    own = []
    for ax, (lo, hi) in enumerate(block.own):
        n = mask.shape[ax]
        own.append(slice(max(0, int(lo) - margin[ax]), min(n, int(hi) + margin[ax])))
    sub = mask[tuple(own)]
    if not sub.any():
        return None
    read = []
    for ax in range(3):
        hit = np.flatnonzero(sub.any(axis=tuple(i for i in range(3) if i != ax)))
        lo = own[ax].start + hit[0] - margin[ax] - context[ax]
        hi = own[ax].start + hit[-1] + 1 + margin[ax] + context[ax]
        r = block.read[ax]
        lo = max(r.start, (max(lo, 0) // grid[ax]) * grid[ax])
        read.append(slice(lo, min(r.stop, hi)))
    return tuple(read)


def owns(block, points_px):
    """Boolean mask: which ``(N, 3)`` global positions (px) this block owns."""
    p = np.asarray(points_px, np.float64).reshape(-1, 3)
    keep = np.ones(len(p), bool)
    for ax, (lo, hi) in enumerate(block.own):
        keep &= (p[:, ax] >= lo) & (p[:, ax] < hi)
    return keep


def block_geometry(backend, block_size, object_um=2 * LABEL_RADIUS_UM, voxel_size_um=VOXEL_SIZE_UM):
    """(block_size, min_overlap, context, grid) px for a network ``backend``: context = its
    receptive field (``backend.context_px()``), min_overlap = object diameter + 2 px; all
    multiples of the grid."""
    grid = tuple(int(g) for g in backend.grid)
    context = tuple(int(c) for c in backend.context_px())
    min_overlap = tuple(int(np.ceil(object_um / v)) + 2 for v in voxel_size_um)

    def up(v, g):
        return int(np.ceil(v / g) * g)

    context = tuple(up(c, g) for c, g in zip(context, grid))
    min_overlap = tuple(up(o, g) for o, g in zip(min_overlap, grid))
    block_size = tuple(max(up(b, g), o + 2 * c + 2 * g) for b, o, c, g in zip(block_size, min_overlap, context, grid))
    return block_size, min_overlap, context, grid
