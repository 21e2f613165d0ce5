"""Resumable frame tasks, in this process or on dask.distributed.

The unit of work is one frame of one file. A task's result is a *part* file written atomically
(``parts/<stem>/t00000.csv``); a rerun skips frames whose part is there and readable and
recomputes only missing or corrupt ones. One bad file or frame does not stop the batch: it is
reported in the summary with its error. A worker that dies loses only its task, which is retried
elsewhere (``retries``).

This module knows nothing of how a frame is computed: it runs the function it is given
(``kt_stardist.pipeline.run_frame``), which must be importable on the workers and return
``(n_points, seconds)``.

Schedulers: ``scheduler=None, workers<=1``: in this process, no dask; ``workers=N``: a
``LocalCluster`` of N single-threaded worker processes; ``scheduler="tcp://host:port"``: an
existing dask cluster; ``cluster="slurm"|"pbs"|"sge"|"lsf"``: dask-jobqueue
(``pip install dask-jobqueue``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kt_stardist.errors import InputError, KtError

__all__ = ["FrameTask", "BatchSummary", "file_stat", "file_stem", "part_path", "part_is_done", "plan", "run_tasks",
           "source_of"]

#: columns every part file must have to count as done
PART_COLUMNS = ("t", "z", "y", "x", "prob")


@dataclass(frozen=True)
class FrameTask:
    """One frame ``t`` of the image at ``path``; its result goes to ``part``."""

    path: str
    t: int
    part: str


@dataclass
class BatchSummary:
    """What a batch did: counts, seconds, outputs and failures ``(path, t, error)``;
    ``recovered``: points of ``points`` found by track-aided recovery (None: it did not run)."""

    frames: int = 0
    computed: int = 0
    skipped: int = 0
    points: int = 0
    recovered: int | None = None  # points added by track-aided recovery (None: it did not run)
    seconds: float = 0.0
    outputs: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def lines(self):
        rec = "" if self.recovered is None else f" ({self.recovered} recovered from tracks)"
        yield (f"{self.frames} frames ({self.computed} computed, {self.skipped} already done), "
               f"{self.points} points{rec}, {self.seconds:.1f} s, {len(self.failures)} failed")
        for path, t, err in self.failures:
            where = path if t is None else f"{path} frame {t}"
            yield f"  failed: {where}: {err}"


def file_stem(path) -> str:
    """Name of an image file without folder and image suffix (``a/cell1.ome.tif`` → ``cell1``,
    ``b/movie.h5:/raw`` → ``movie``): the name its output CSVs get. A scene of a vendor file
    (``FILE:SCENE``, :func:`kt_stardist.io.vendor.split_scene`) is appended with ``_``, every
    character of it but letters, digits, ``.`` and ``-`` made ``_`` (``c/plate.czi:2`` →
    ``plate_2``, ``x.lif:Position 1`` → ``x_Position_1``): a name safe on every file system."""
    import re

    src, scene = source_of(path)
    name = src.name
    scene = None if name.lower().endswith(".h5") else scene  # an HDF5 dataset is not named
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".hdf5", ".h5", ".ome.zarr", ".zarr", ".czi", ".nd2", ".lif"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    name = name.replace(":", "_") if name.strip(".") else "image"  # never "..": parts stay in their folder
    scene = re.sub(r"[^\w.-]+", "_", scene or "", flags=re.ASCII).strip("_")
    return f"{name}_{scene}" if scene else name


def source_of(path) -> tuple:
    """The file or folder on disk that an input names, and the part of it read:
    ``movie.h5:/raw`` → ``(Path("movie.h5"), "/raw")``, ``plate.czi:2`` → ``(Path("plate.czi"),
    "2")`` (:func:`kt_stardist.io.vendor.split_scene`), ``cell.tif`` → ``(Path("cell.tif"), None)``."""
    from kt_stardist.io.vendor import split_scene

    text = str(path)
    if ".h5:" in text:
        file, inner = text.split(".h5:", 1)
        return Path(file + ".h5"), inner
    vendor = split_scene(text)
    if vendor is not None:
        return vendor
    return Path(text), None


def file_stat(path):
    """What tells whether a file or folder changed: ``[size bytes, mtime ns]`` of a file; of a
    folder (an OME-Zarr store, whose own mtime stays when only chunks are rewritten) ``[total
    size, newest mtime ns, number of files]`` over every file and folder in it (one walk, no
    reading). None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isdir(path):
        return [st.st_size, st.st_mtime_ns]
    size, newest, n, todo = 0, st.st_mtime_ns, 0, [str(path)]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                est = e.stat(follow_symlinks=False)
            except OSError:
                continue
            newest = max(newest, est.st_mtime_ns)
            if e.is_dir(follow_symlinks=False):
                todo.append(e.path)
            else:
                size, n = size + est.st_size, n + 1
    return [size, newest, n]


def part_path(parts_dir, path, t) -> Path:
    """Where the points of frame ``t`` of ``path`` go."""
    return Path(parts_dir) / file_stem(path) / f"t{int(t):05d}.csv"


def part_is_done(part) -> bool:
    """A part counts as done when it exists and reads back as a points table."""
    try:
        df = pd.read_csv(part)
    except Exception:
        return False
    return all(c in df.columns for c in PART_COLUMNS)


def plan(inputs, parts_dir, axes=None, voxel_size_um=None):
    """Frame tasks for ``inputs`` (paths), reading only each file's header/shape.

    Returns ``(tasks, failures)``: unreadable inputs become failures ``(path, None, error)``.
    Two inputs with the same file stem are refused (their parts would collide).
    """
    from kt_stardist.io import read_image

    stems = {}
    for p in inputs:
        s = file_stem(p)
        if s in stems:
            raise InputError(f"{p}: same file name as {stems[s]}; outputs would collide")
        stems[s] = p
    tasks, failures = [], []
    for p in inputs:
        try:
            img = read_image(p, axes=axes, voxel_size_um=voxel_size_um, lazy=True)
        except KtError as e:
            failures.append((str(p), None, str(e)))
            continue
        tasks += [FrameTask(str(p), t, str(part_path(parts_dir, p, t))) for t in range(img.n_frames)]
    return tasks, failures


def _client(scheduler=None, workers=1, cluster=None, cluster_kwargs=None):
    """A dask Client (and the cluster it owns, to close), or ``(None, None)`` for in-process."""
    if scheduler is None and cluster is None and (workers or 1) <= 1:
        return None, None
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        return Client(scheduler), None
    if cluster is not None:
        try:
            import dask_jobqueue
        except ImportError:
            raise KtError(f"--cluster {cluster} needs dask-jobqueue: pip install dask-jobqueue") from None
        kinds = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
        if cluster not in kinds:
            raise InputError(f"--cluster: unknown {cluster!r}; expected one of {', '.join(kinds)}")
        kw = dict(cores=1, processes=1, memory="8GB")
        kw.update(cluster_kwargs or {})
        c = getattr(dask_jobqueue, kinds[cluster])(**kw)
        c.scale(jobs=max(1, workers or 1))
        return Client(c), c
    c = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                     host="127.0.0.1", dashboard_address=None)
    return Client(c), c


def run_tasks(tasks, fn, fn_kwargs=None, local_model=None, scheduler=None, workers=1, cluster=None,
              cluster_kwargs=None, retries=2, progress=True, summary: BatchSummary | None = None) -> BatchSummary:
    """Run ``fn(task, **fn_kwargs)`` for every task whose part is not done yet.

    In this process (no scheduler, ``workers <= 1``) ``fn`` also gets ``model=local_model()``
    (loaded once, only when there is work); on dask each worker loads its own. Returns the
    summary with ``frames``, ``computed``, ``skipped`` and ``failures`` filled in.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    summary = summary or BatchSummary()
    fn_kwargs = dict(fn_kwargs or {})
    todo = [tk for tk in tasks if not part_is_done(tk.part)]
    summary.frames, summary.skipped = len(tasks), len(tasks) - len(todo)
    bar = tqdm(total=len(todo), desc="frames", unit="frame", disable=not progress or not todo)
    client, cluster_obj = _client(scheduler, workers, cluster, cluster_kwargs)
    try:
        if client is None:
            model = local_model() if (todo and local_model is not None) else None
            for tk in todo:
                try:
                    fn(tk, **fn_kwargs, model=model)
                    summary.computed += 1
                except KtError as e:
                    summary.failures.append((tk.path, tk.t, str(e)))
                except Exception as e:  # one bad frame does not stop the batch
                    summary.failures.append((tk.path, tk.t, f"{type(e).__name__}: {e}"))
                bar.update()
        else:
            from dask.distributed import as_completed

            futures = {client.submit(fn, tk, **fn_kwargs, key=f"kt-frame-{os.getpid()}-{i}",
                                     retries=retries, pure=False): tk for i, tk in enumerate(todo)}
            for fut in as_completed(futures):
                tk = futures[fut]
                try:
                    fut.result()
                    summary.computed += 1
                except Exception as e:
                    summary.failures.append((tk.path, tk.t, f"{type(e).__name__}: {e}".splitlines()[0]))
                bar.update()
    finally:
        bar.close()
        if client is not None:
            client.close()
        if cluster_obj is not None:
            cluster_obj.close()
    summary.seconds += time.perf_counter() - t0
    return summary
