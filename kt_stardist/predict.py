"""From a volume or time-lapse to kinetochore points with a StarDist3D model.

The flow for one frame (axis order z, y, x; channel last)::

    raw frame (image px) ─ rescale to the model's voxel size ─ normalize (signal region, whole frame)
      ─ screen (DoG, where can spots be?) ─ blocks around the candidate clusters, with halo
      ─ StarDist predict_sparse + NMS per block, each detection kept by the one block that owns
        its centre ─ map back to image px ─ refine (sub-voxel, raw intensities) ─ points table

A whole 61 × 1000 × 1000 frame is never pushed densely through the network: only blocks placed
around screen candidates are predicted (:func:`plan_blocks`), and only candidates above ``prob_thresh`` are kept
(``predict_sparse``), so memory is bounded by a block whatever the volume size.

TensorFlow/stardist are imported lazily (inside functions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from kt_stardist.defaults import LABEL_RADIUS_UM, VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.normalize import normalize
from kt_stardist.refine import refine_and_split, refine_points  # noqa: F401  (part of this module's API)

#: largest block (read region) sent to the network at once, px at the model's voxel size (z, y, x);
#: 61 x 320 x 320 px peaked at ~2 GB (process RSS) with the shipped model on CPU
BLOCK_SIZE_PX = (64, 320, 320)

#: spot-sized Gaussian sigma of the screen, µm (z, y, x)
SPOT_SIGMA_UM = (0.25, 0.12, 0.12)

#: frames whose model input exceeds this many GB as float32 are predicted out of core
MAX_IN_MEMORY_GB = 4.0


def exceeds_memory(shape_zyx, n_channels, max_in_memory_gb=MAX_IN_MEMORY_GB) -> bool:
    """True when a ``(Z, Y, X)`` volume of ``n_channels`` float32 channels is larger than
    ``max_in_memory_gb`` (GB, 1e9 bytes; None: never), i.e. goes out of core."""
    nbytes = 4.0 * int(n_channels) * np.prod([int(v) for v in shape_zyx], dtype=np.float64)
    return max_in_memory_gb is not None and nbytes > float(max_in_memory_gb) * 1e9


# --------------------------------------------------------------------------------------------
# model facts
# --------------------------------------------------------------------------------------------

def model_facts(model) -> dict:
    """What prediction needs to know of a model: ``voxel_size_um`` (z, y, x), ``n_channel_in``,
    ``temporal`` (frames t-1, t, t+1 stacked as channels), ``n_image_channels`` (channels per
    frame) and ``thresholds`` (prob, nms).

    From :func:`kt_stardist.model.model_info` (``model.json``; plain StarDist folders get
    defaults: 3 or 6 channels mean temporal context, the default voxel size).
    """
    from kt_stardist.model import model_info

    info = dict(model_info(model))
    n_in = int(info.get("n_channel_in", getattr(model.config, "n_channel_in", 1)))
    temporal = bool(info.get("temporal", n_in in (3, 6)))
    vs = info.get("voxel_size_um") or VOXEL_SIZE_UM
    per_frame = n_in // 3 if temporal else n_in
    thr = getattr(model, "thresholds", None)
    return dict(
        voxel_size_um=tuple(float(v) for v in vs),
        n_channel_in=n_in,
        temporal=temporal,
        n_image_channels=int(info.get("n_image_channels", per_frame)),
        thresholds=dict(prob=float(getattr(thr, "prob", 0.5)), nms=float(getattr(thr, "nms", 0.4))),
        name=str(info.get("name", getattr(model, "name", "model"))),
    )


# --------------------------------------------------------------------------------------------
# rescaling between the image's and the model's voxel size
# --------------------------------------------------------------------------------------------

def zoom_factors(image_voxel_um, model_voxel_um, tol=1e-3) -> tuple | None:
    """Zoom factors (z, y, x) that bring an image to the model's voxel size; None if equal."""
    f = tuple(float(i) / float(m) for i, m in zip(image_voxel_um, model_voxel_um))
    return None if all(abs(v - 1.0) < tol for v in f) else f


def rescale_volume(volume, factors):
    """Zoom a ``(Z, Y, X[, C])`` volume by ``factors`` (z, y, x), linear interpolation, float32."""
    vol = np.asarray(volume, np.float32)
    if factors is None:
        return vol
    if vol.ndim == 4:
        return np.stack([ndimage.zoom(vol[..., c], factors, order=1) for c in range(vol.shape[-1])], -1)
    return ndimage.zoom(vol, factors, order=1)


def points_to_image_px(points_model_px, shape_image, shape_model):
    """Map ``(N, 3)`` positions from the rescaled grid back to the image's own px.

    Follows :func:`scipy.ndimage.zoom` (corners aligned): model index ``o`` came from image
    coordinate ``o * (in - 1) / (out - 1)``.
    """
    p = np.asarray(points_model_px, np.float64).reshape(-1, 3)
    s = np.array([(i - 1) / max(o - 1, 1) for i, o in zip(shape_image, shape_model)], np.float64)
    return p * s


# --------------------------------------------------------------------------------------------
# screen and blocks
# --------------------------------------------------------------------------------------------

#: the screen's DoG runs on means of this many × this many px in y-x (a spot is ~2 px wide
#: there, blocks are planned on 32 px cells): 4× fewer voxels through the filters
SCREEN_BIN_YX = 2


def screen(volume, voxel_size_um=VOXEL_SIZE_UM, spot_sigma_um=SPOT_SIGMA_UM, k=6.0, floor=0.05):
    """Boolean ``(Z, Y, X)`` mask of where spots can be: a conservative difference of Gaussians.

    ``volume`` is the normalised first (EGFP) channel. The DoG (spot-sized minus 4× larger
    Gaussian, on :data:`SCREEN_BIN_YX` y-x bins) is thresholded at ``max(k * robust noise,
    floor)`` (normalised units). It only decides which blocks reach the network, so it errs on
    the side of keeping.
    """
    dog = _dog(np.asarray(volume, np.float32), voxel_size_um, spot_sigma_um)
    return dog > _screen_threshold(dog[_noise_sample(dog.shape)], k, floor)


def _dog(v, voxel_size_um, spot_sigma_um, b=SCREEN_BIN_YX):
    """DoG of ``v`` (Z, Y, X) computed on b × b y-x means (edges repeated to whole bins) and
    repeated back to ``v``'s shape; a chunk whose y-x start is a multiple of b, read with the
    halo of :func:`_dog_radius`, gives the whole volume's values."""
    Z, Y, X = v.shape
    if b > 1:
        if Y % b or X % b:
            v = np.pad(v, ((0, 0), (0, -Y % b), (0, -X % b)), mode="edge")
        binned = np.zeros((Z, v.shape[1] // b, v.shape[2] // b), np.float32)
        for i in range(b):
            for j in range(b):
                binned += v[:, i::b, j::b]
        v = binned / (b * b)
    s1 = np.array(spot_sigma_um) / (np.array(voxel_size_um) * (1, b, b))
    small = ndimage.gaussian_filter(v, s1, mode="nearest")
    dog = small - ndimage.gaussian_filter(small, 4 * s1, mode="nearest")
    if b > 1:
        dog = np.repeat(np.repeat(dog, b, axis=1), b, axis=2)[:, :Y, :X]
    return dog


def _dog_radius(voxel_size_um, spot_sigma_um, b=SCREEN_BIN_YX):
    """Halo (px, z, y, x; y-x multiples of b) that makes a per-chunk :func:`_dog` equal to the
    whole-volume one."""
    s1 = np.array(spot_sigma_um) / (np.array(voxel_size_um) * (1, b, b))
    r = [int(4.0 * a + 0.5) + int(4.0 * 4 * a + 0.5) for a in s1]  # scipy's truncate=4 radii, in bins
    return (r[0], b * r[1], b * r[2])


def _noise_sample(shape):
    """Strided subsample (slices) the screen's noise level is estimated on."""
    return (slice(None, None, max(1, shape[0] // 16)), slice(None, None, 4), slice(None, None, 4))


def _screen_threshold(sub, k, floor):
    med = float(np.median(sub))
    mad = 1.4826 * float(np.median(np.abs(sub - med)))
    return med + max(k * mad, floor)


def screen_lazy(x, voxel_size_um=VOXEL_SIZE_UM, spot_sigma_um=SPOT_SIGMA_UM, k=6.0, floor=0.05,
                chunk_px=None):
    """:func:`screen` of channel 0 of a normalised ``(Z, Y, X, C)`` array-like read by chunks
    (DoG with a halo of the kernels' radius: equal to the in-memory screen), as a
    :class:`kt_stardist.outofcore.SparseMask`. Two passes: the noise subsample, then the
    candidates; memory: one chunk, the subsample (≤ 1/16 of the volume) and the candidates."""
    from kt_stardist import outofcore as O

    shape = tuple(int(s) for s in x.shape[:3])
    chunk_px = O.CHUNK_PX if chunk_px is None else chunk_px
    b = SCREEN_BIN_YX  # chunks start on whole y-x bins, so their DoG equals the whole volume's
    chunk_px = (chunk_px[0], -(-chunk_px[1] // b) * b, -(-chunk_px[2] // b) * b)
    depth = _dog_radius(voxel_size_um, spot_sigma_um)
    step = [s.step for s in _noise_sample(shape)]

    def dogs():
        for core, rd, inner in O.chunks(shape, chunk_px, depth):
            yield core, _dog(x[rd][..., 0], voxel_size_um, spot_sigma_um)[inner]

    sub = []
    for core, d in dogs():
        first = tuple(slice((-c.start) % st, None, st) for c, st in zip(core, step))
        sub.append(d[first].ravel())
    thr = _screen_threshold(np.concatenate(sub), k, floor)
    del sub
    coords = [np.argwhere(d > thr) + np.array([c.start for c in core]) for core, d in dogs()]
    return O.SparseMask(shape, np.concatenate(coords) if coords else np.zeros((0, 3), int))


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
    return np.asarray(mask.coords) if hasattr(mask, "coords") else np.argwhere(np.asarray(mask))


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


def block_geometry(model, block_size=BLOCK_SIZE_PX, object_um=2 * LABEL_RADIUS_UM, voxel_size_um=VOXEL_SIZE_UM):
    """(block_size, min_overlap, context, grid) px for a model: context = StarDist's own
    receptive-field estimate (``_axes_tile_overlap``), min_overlap = object diameter + 2 px."""
    grid = tuple(int(g) for g in model.config.grid)
    context = tuple(int(c) for c in model._axes_tile_overlap("ZYX"))
    min_overlap = tuple(int(np.ceil(object_um / v)) + 2 for v in voxel_size_um)

    def up(v, g):
        return int(np.ceil(v / g) * g)

    context = tuple(up(c, g) for c, g in zip(context, grid))
    min_overlap = tuple(up(o, g) for o, g in zip(min_overlap, grid))
    block_size = tuple(max(up(b, g), o + 2 * c + 2 * g) for b, o, c, g in zip(block_size, min_overlap, context, grid))
    return block_size, min_overlap, context, grid


# --------------------------------------------------------------------------------------------
# one normalised volume at the model's voxel size -> instances
# --------------------------------------------------------------------------------------------

def detect_instances(model, x, prob_thresh=None, nms_thresh=None, block_size=BLOCK_SIZE_PX,
                     voxel_size_um=VOXEL_SIZE_UM, screen_mask=None, show_progress=False):
    """StarDist instances of a normalised ``(Z, Y, X, C)`` volume at the model's voxel size.

    Blocks (core + halo of StarDist's receptive field, at most ``block_size`` px) are placed
    around the candidates of ``screen_mask`` (``(Z, Y, X)`` bool; None: :func:`screen` of
    channel 0) by :func:`plan_blocks`; nothing else is predicted. NMS (``b=0``: objects at the
    volume border are kept) runs per block and each detection is kept by the one block whose
    core holds its centre.

    Returns
    -------
    dict with ``points`` (N, 3) px (z, y, x, NMS centres), ``prob`` (N,), ``dist`` (N, n_rays),
    ``rays``, ``n_blocks`` (predicted), ``n_voxels_read`` (sent to the network) and ``n_voxels``
    (of the volume).
    """
    from stardist import rays_from_json
    from stardist.nms import non_maximum_suppression_3d_sparse
    from tqdm.auto import tqdm

    th = model.thresholds
    prob_thresh = float(th.prob if prob_thresh is None else prob_thresh)
    nms_thresh = float(th.nms if nms_thresh is None else nms_thresh)
    rays = rays_from_json(model.config.rays_json)
    shape = x.shape[:3]
    if screen_mask is None:
        screen_mask = screen(x[..., 0], voxel_size_um)
    todo = plan_blocks(screen_mask, *block_geometry(model, block_size, voxel_size_um=voxel_size_um))

    pts, probs, dists = [], [], []
    n_vox = 0
    for b, read in tqdm(todo, desc="blocks", disable=not show_progress, leave=False):
        n_vox += int(np.prod([s.stop - s.start for s in read]))
        prob, dist, p = _sparse(model, x[read], prob_thresh)
        if len(prob) == 0:
            continue
        p, pr, d, _ = non_maximum_suppression_3d_sparse(dist, prob, p, rays, nms_thresh=nms_thresh)
        offset = np.array([s.start for s in read], np.float64)
        g = p.astype(np.float64) + offset
        keep = owns(b, g)
        pts.append(g[keep]), probs.append(pr[keep]), dists.append(d[keep])
    n_rays = len(rays)
    return dict(
        points=np.concatenate(pts) if pts else np.zeros((0, 3)),
        prob=np.concatenate(probs) if probs else np.zeros(0, np.float32),
        dist=np.concatenate(dists) if dists else np.zeros((0, n_rays), np.float32),
        n_blocks=len(todo), n_voxels_read=n_vox, n_voxels=int(np.prod(shape)), rays=rays,
    )


def _sparse(model, xb, prob_thresh):
    """``predict_sparse`` of one block with ``b=0`` (keep candidates at the block border)."""
    r = model.predict_sparse(xb, axes="ZYXC", prob_thresh=prob_thresh, b=0, show_tile_progress=False)
    prob, dist, points = r[0], r[1], r[-1]
    return np.asarray(prob), np.asarray(dist), np.asarray(points)


# --------------------------------------------------------------------------------------------
# frames and images
# --------------------------------------------------------------------------------------------

def _points_frame(points, prob, voxel_size_um, t=None):
    df = pd.DataFrame(points, columns=["z", "y", "x"])
    for c, v in zip("zyx", voxel_size_um):
        df[f"{c}_um"] = df[c] * v
    df["prob"] = np.asarray(prob, np.float64)
    if t is not None:
        df.insert(0, "t", int(t))
    keys = [k for k in ("t", "z", "y", "x") if k in df.columns]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def _refined_frame(volume, points, prob, voxel_size_um, refine, split):
    """Points table of the detections ``points`` (px of ``volume``, (Z, Y, X) spot channel) after
    refinement; with ``split`` also the close sisters found inside them (each with its
    detection's ``prob``); see :func:`kt_stardist.refine.refine_and_split`."""
    pts, parent = refine_and_split(volume, points, voxel_size_um, method=refine, split=split)
    return _points_frame(pts, np.asarray(prob, np.float64)[parent], voxel_size_um)


def predict_volume(model, volume, voxel_size_um=None, prob_thresh=None, nms_thresh=None, refine="gauss",
                   spot_channel=0, block_size=BLOCK_SIZE_PX, return_instances=False, show_progress=False,
                   normalized=False, max_in_memory_gb=MAX_IN_MEMORY_GB, split=True):
    """Points of one volume.

    Parameters
    ----------
    model : StarDist3D
    volume : ndarray or lazy array (dask, h5py/zarr dataset) (Z, Y, X, C), raw intensities, image
        px; C == the model's ``n_channel_in`` (for temporal models: frames t-1, t, t+1 already
        stacked as channels, see :func:`model_input`).
    voxel_size_um : (z, y, x) µm of ``volume``; None: the model's. Another voxel size than the
        model's is rescaled to it (``scipy.ndimage.zoom``, linear) and points are mapped back.
    prob_thresh, nms_thresh : None: the model's thresholds.
    refine : "gauss", "centroid" or "none" (see :func:`refine_points`).
    split : with ``refine="gauss"``, also look inside each detection for a close sister that the
        network merged with it (:func:`kt_stardist.refine.refine_and_split`); found sisters are
        extra rows with their detection's ``prob``.
    spot_channel : channel of ``volume`` refined on (the EGFP channel of the centre frame).
    normalized : the volume is already normalised (skip :func:`kt_stardist.normalize.normalize`).
    max_in_memory_gb : a volume larger than this as float32 (GB, 1e9 bytes) is predicted out of
        core (:func:`predict_volume_out_of_core`: same points, read block by block); 0 forces it.

    Returns
    -------
    DataFrame ``z, y, x`` (float px of ``volume``), ``z_um, y_um, x_um``, ``prob``, sorted;
    with ``return_instances`` also the instance dict of :func:`detect_instances` (positions
    in the model's px) and the zoom factors.
    """
    facts = model_facts(model)
    shape = tuple(np.shape(volume)) if not hasattr(volume, "shape") else tuple(volume.shape)
    if len(shape) == 3:
        shape = shape + (1,)
    if len(shape) != 4 or shape[-1] != facts["n_channel_in"]:
        raise InputError(f"volume of shape {tuple(np.shape(volume))} does not fit model {facts['name']}: "
                         f"it takes {facts['n_channel_in']} channel(s) (Z, Y, X, C)")
    if exceeds_memory(shape[:3], shape[3], max_in_memory_gb):
        return predict_volume_out_of_core(model, volume, voxel_size_um, prob_thresh, nms_thresh, refine=refine,
                                          spot_channel=spot_channel, block_size=block_size,
                                          return_instances=return_instances, show_progress=show_progress,
                                          normalized=normalized, split=split)
    vol = np.asarray(volume)
    if vol.ndim == 3:
        vol = vol[..., None]
    vs_model = facts["voxel_size_um"]
    vs_img = vs_model if voxel_size_um is None else tuple(float(v) for v in voxel_size_um)
    f = zoom_factors(vs_img, vs_model)
    x = rescale_volume(vol, f)
    if not normalized:
        x = normalize(x, voxel_size_um=vs_model)
    inst = detect_instances(model, x, prob_thresh, nms_thresh, block_size=block_size, voxel_size_um=vs_model,
                            show_progress=show_progress)
    pts = inst["points"]
    if f is not None:
        pts = points_to_image_px(pts, vol.shape[:3], x.shape[:3])
    del x
    df = _refined_frame(vol[..., spot_channel], pts, inst["prob"], vs_img, refine, split)
    if return_instances:
        return df, inst, f
    return df


def predict_volume_out_of_core(model, volume, voxel_size_um=None, prob_thresh=None, nms_thresh=None,
                               refine="gauss", spot_channel=0, block_size=BLOCK_SIZE_PX, return_instances=False,
                               show_progress=False, normalized=False, chunk_px=None, split=True):
    """:func:`predict_volume` of a volume that need not fit in memory; the same points.

    ``volume`` (Z, Y, X[, C]) is a dask array or any sliceable array-like (h5py/zarr dataset,
    memmap, ndarray), never read whole:

    1. normalisation: the signal region and per-channel percentiles of
       :func:`kt_stardist.normalize.normalize`, computed exactly from chunks
       (:func:`kt_stardist.outofcore.normalization`);
    2. screen: the DoG of :func:`screen` per chunk with a halo covering its kernels
       (:func:`screen_lazy`);
    3. StarDist blocks (:func:`detect_instances`), each read and normalised only when the screen
       has candidates in it; each detection is kept by the one block owning its centre;
    4. refinement reads a small window around each point.

    Held in memory: one chunk or block at a time (float32, with halo), the (1, 4, 4)-binned first
    channel (1/16 of it), the screen's noise subsample (≤ 1/16) and candidate coordinates, and the
    detections. Dask arrays are read with the single-threaded scheduler; their chunks should not
    be much larger than a block (whole-frame chunks are re-read for every block).

    Only the model's voxel size is supported: another ``voxel_size_um`` raises
    :class:`InputError` (resample the image first, or predict it in memory).
    """
    from kt_stardist import outofcore as O

    facts = model_facts(model)
    vs_model = facts["voxel_size_um"]
    vs_img = vs_model if voxel_size_um is None else tuple(float(v) for v in voxel_size_um)
    if zoom_factors(vs_img, vs_model) is not None:
        fmt = " × ".join(f"{v:g}" for v in vs_img), " × ".join(f"{v:g}" for v in vs_model)
        raise InputError(f"volume too large for memory at voxel size {fmt[0]} µm: resample it to the model's "
                         f"{fmt[1]} µm first (out-of-core prediction does not rescale)")
    chunk_px = O.CHUNK_PX if chunk_px is None else chunk_px
    vol = O.as_lazy(volume, chunk_px)
    if vol.ndim == 3:
        vol = vol[..., None]
    if normalized:
        x = O.NormalizedView(vol, [(0.0, 1.0)] * vol.shape[-1])
    else:
        x = O.NormalizedView(vol, O.normalization(vol, voxel_size_um=vs_model, chunk_px=chunk_px))
    mask = screen_lazy(x, vs_model, chunk_px=chunk_px)
    inst = detect_instances(model, x, prob_thresh, nms_thresh, block_size=block_size, voxel_size_um=vs_model,
                            screen_mask=mask, show_progress=show_progress)
    df = _refined_frame(vol[..., spot_channel], inst["points"], inst["prob"], vs_img, refine, split)
    return (df, inst, None) if return_instances else df


def model_input(frames, t, facts, channel=None):
    """The model's input for frame ``t`` of a ``(T, Z, Y, X, C)`` array, ``(Z, Y, X, C_in)``.

    1-channel-per-frame models take ``channel`` (default 0) of a multichannel image; temporal
    models get frames t-1, t, t+1 (first/last repeated at the ends) stacked as channels,
    time-major (:func:`kt_stardist.model.model_input`). Checked: raises :class:`InputError`.
    """
    from kt_stardist.model import model_input as stack

    C = frames.shape[-1]
    if facts["n_image_channels"] == 1:
        c = 0 if channel is None else int(channel)
        if not 0 <= c < C:
            raise InputError(f"--channel {c} out of range: the image has {C} channel(s)")
        frames = frames[..., c:c + 1]
    elif C != facts["n_image_channels"]:
        raise InputError(f"model {facts['name']} takes {facts['n_image_channels']} channels per frame, "
                         f"the image has {C}")
    return stack(frames, t, temporal=facts["temporal"])


def check_image_for_model(image, facts, channel=None):
    """One-line :class:`InputError` when an image's channels or dimensionality do not fit a model."""
    name = getattr(image, "path", None) or "image"
    T, C = image.data.shape[0], image.data.shape[-1]
    per = facts["n_image_channels"]
    if facts["temporal"] and T < 2:
        raise InputError(f"{name}: model {facts['name']} is temporal (takes frames t-1, t, t+1) "
                         f"but the image is a single 3D volume; give a time-lapse (T > 1)")
    if per > 1 and C != per:
        raise InputError(f"{name}: image has {C} channel(s), model {facts['name']} takes {per} per frame")
    if per == 1 and channel is not None and not 0 <= int(channel) < C:
        raise InputError(f"{name}: --channel {channel} out of range, the image has {C} channel(s)")


def _spot_channel(facts):
    """Input channel holding the spot (EGFP) signal of the centre frame (time-major stacking)."""
    return facts["n_image_channels"] if facts["temporal"] else 0


def predict_frame(model, image, t, voxel_size_um=None, channel=None, prob_thresh=None, nms_thresh=None,
                  refine="gauss", show_progress=False, return_instances=False, max_in_memory_gb=MAX_IN_MEMORY_GB,
                  **kwargs):
    """Points of frame ``t`` of an :class:`kt_stardist.io.Image` (``data`` TZYXC, may be lazy:
    only frames t-1, t, t+1 are read). Returns a DataFrame ``t, z, y, x`` (image px),
    ``z_um, y_um, x_um``, ``prob``; with ``return_instances`` also the instances and zoom factors.

    A frame whose model input is larger than ``max_in_memory_gb`` (float32, GB) is not read
    whole: it is passed on lazily and predicted block by block
    (:func:`predict_volume_out_of_core`, same points).
    """
    facts = model_facts(model)
    check_image_for_model(image, facts, channel)
    vs = voxel_size_um if voxel_size_um is not None else getattr(image, "voxel_size_um", None)
    T = image.data.shape[0]
    idx = sorted({min(max(t + d, 0), T - 1) for d in ((-1, 0, 1) if facts["temporal"] else (0,))})
    if exceeds_memory(image.data.shape[1:4], facts["n_channel_in"], max_in_memory_gb):
        x = _lazy_model_input(image.data, t, facts, channel)
    else:
        frames = np.stack([np.asarray(image.frame(i)) if hasattr(image, "frame") else np.asarray(image.data[i])
                           for i in idx])
        x = model_input(frames, idx.index(t), facts, channel)
    df, inst, f = predict_volume(model, x, vs, prob_thresh, nms_thresh, refine=refine,
                                 spot_channel=_spot_channel(facts), return_instances=True,
                                 show_progress=show_progress, max_in_memory_gb=max_in_memory_gb, **kwargs)
    df.insert(0, "t", int(t))
    return (df, inst, f) if return_instances else df


def _lazy_model_input(data, t, facts, channel=None):
    """:func:`model_input` as a dask array (nothing read): frame ``t`` of a TZYXC array (dask or
    array-like, wrapped without reading), temporal models' frames t-1, t, t+1 as channels."""
    import dask.array as da

    from kt_stardist import outofcore as O

    if not O.is_lazy(data):
        data = da.from_array(data, chunks=(1,) + tuple(O.CHUNK_PX) + (-1,), asarray=True)
    T = data.shape[0]
    c = 0 if channel is None else int(channel)
    idx = [min(max(t + d, 0), T - 1) for d in ((-1, 0, 1) if facts["temporal"] else (0,))]
    parts = [data[i][..., c:c + 1] if facts["n_image_channels"] == 1 else data[i] for i in idx]
    return parts[0] if len(parts) == 1 else da.concatenate(parts, axis=-1)


def predict_image(model, image, voxel_size_um=None, channel=None, prob_thresh=None, nms_thresh=None,
                  refine="gauss", show_progress=True, labels=False, **kwargs):
    """Points of every frame of an :class:`kt_stardist.io.Image` (``data`` TZYXC).

    ``voxel_size_um`` overrides the image's; without either the model's voxel size is assumed.
    Time-lapses (T > 1) get a ``t`` column; temporal models get frames t-1, t, t+1.
    With ``labels`` also returns an int32 label image (T, Z, Y, X) in image px.
    """
    from tqdm.auto import tqdm

    facts = model_facts(model)
    check_image_for_model(image, facts, channel)
    T = image.data.shape[0]
    frames, lab = [], None
    for t in tqdm(range(T), desc="frames", disable=not show_progress or T == 1):
        df, inst, f = predict_frame(model, image, t, voxel_size_um, channel, prob_thresh, nms_thresh,
                                    refine=refine, show_progress=show_progress and T == 1,
                                    return_instances=True, **kwargs)
        frames.append(df if T > 1 else df.drop(columns="t"))
        if labels:
            if lab is None:
                lab = np.zeros(image.data.shape[:4], np.int32)
            lab[t] = render_labels(inst, image.data.shape[1:4], f)
    out = pd.concat(frames, ignore_index=True)
    return (out, lab) if labels else out


def render_labels(instances, shape_px, factors=None):
    """Label image (int32, ``shape_px`` image px) of the instances of :func:`detect_instances`
    (polyhedra drawn by StarDist; rescaled back to image px when the model's voxel size differs)."""
    from stardist.geometry import polyhedron_to_label

    pts, dist, rays = instances["points"], instances["dist"], instances["rays"]
    if len(pts) == 0:
        return np.zeros(shape_px, np.int32)
    if factors is not None:
        pts = pts / np.asarray(factors)
        rays = rays.copy(scale=tuple(1.0 / np.asarray(factors)))
    return polyhedron_to_label(dist, pts, rays=rays, prob=instances["prob"], shape=tuple(shape_px),
                               verbose=False).astype(np.int32)


def load(path=None):
    """A model folder (None: the shipped default); see :func:`kt_stardist.model.load_model`."""
    from kt_stardist.model import load_model

    return load_model(path)
