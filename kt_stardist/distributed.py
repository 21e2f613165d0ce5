"""Batch prediction over many frames and files on dask.distributed.

The unit of work is one frame of one file (plus its t-1/t+1 neighbours when the model takes
temporal context). Each worker loads the model once and keeps it; it reads its frames from the
path itself (lazily: only the frames it needs), so no image goes through the scheduler.
Per-frame results are written atomically to ``OUT_DIR/parts/<stem>/t0000.csv``; a rerun skips
frames whose part is already there and readable, and recomputes only missing or corrupt ones.
A final merge writes one points CSV per input and ``all_points.csv`` (with ``t`` and
``source``), atomically. One bad file or frame does not stop the batch: it is reported in the
summary with its error.

This module knows nothing of how a frame is predicted: it calls
:func:`kt_stardist.predict.predict_frame`.

Schedulers: ``scheduler=None, workers<=1``: in this process, no dask; ``workers=N``: a
``LocalCluster`` of N single-threaded worker processes; ``scheduler="tcp://host:port"``: an
existing dask cluster; ``cluster="slurm"|"pbs"``: dask-jobqueue (``pip install dask-jobqueue``).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kt_stardist.errors import InputError, KtError

#: columns every part file must have to count as done
_PART_COLUMNS = ("t", "z", "y", "x", "prob")


@dataclass(frozen=True)
class FrameTask:
    """One frame ``t`` of the image at ``path``; its result goes to ``part``."""

    path: str
    t: int
    part: str


@dataclass
class BatchSummary:
    """What a batch did: counts, seconds, merged outputs and failures ``(path, t, error)``."""

    frames: int = 0
    computed: int = 0
    skipped: int = 0
    points: int = 0
    seconds: float = 0.0
    outputs: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    def lines(self):
        yield (f"{self.frames} frames ({self.computed} computed, {self.skipped} already done), "
               f"{self.points} points, {self.seconds:.1f} s, {len(self.failures)} failed")
        for path, t, err in self.failures:
            where = path if t is None else f"{path} frame {t}"
            yield f"  failed: {where}: {err}"


def file_stem(path) -> str:
    """Name of an image file without folder and image suffix (``a/cell1.ome.tif`` → ``cell1``,
    ``b/movie.h5:/raw`` → ``movie``): the name its output CSVs get."""
    name = Path(str(path).split(".h5:")[0]).name
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".hdf5", ".h5"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def part_path(out_dir, path, t) -> Path:
    """Where the points of frame ``t`` of ``path`` go."""
    return Path(out_dir) / "parts" / file_stem(path) / f"t{int(t):05d}.csv"


def part_is_done(part) -> bool:
    """A part counts as done when it exists and reads back as a points table."""
    try:
        df = pd.read_csv(part)
    except Exception:
        return False
    return all(c in df.columns for c in _PART_COLUMNS)


def plan(inputs, out_dir, axes=None, voxel_size_um=None):
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
        tasks += [FrameTask(str(p), t, str(part_path(out_dir, p, t))) for t in range(img.n_frames)]
    return tasks, failures


@functools.lru_cache(maxsize=4)
def _cached_model(model_dir):
    """The model of a worker process, loaded once and kept."""
    from kt_stardist.predict import load

    return load(model_dir)


def run_frame(task: FrameTask, model_dir=None, axes=None, voxel_size_um=None, predict_kwargs=None, model=None):
    """Predict one frame and write its part atomically; returns ``(n_points, seconds)``.

    On a worker the model is loaded once per process and cached (``model`` None); the image is
    opened lazily and only the frames needed are read.
    """
    from kt_stardist.io import read_image, write_points
    from kt_stardist.predict import predict_frame

    t0 = time.perf_counter()
    if model is None:
        model = _cached_model(None if model_dir is None else str(model_dir))
    image = read_image(task.path, axes=axes, voxel_size_um=voxel_size_um, lazy=True)
    df = predict_frame(model, image, task.t, **(predict_kwargs or {}))
    df = df.assign(t=task.t)
    vs = image.voxel_size_um
    write_points(df, task.part, voxel_size_um=vs)
    return len(df), time.perf_counter() - t0


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


def run_batch(inputs, out_dir, model_dir=None, axes=None, voxel_size_um=None, predict_kwargs=None,
              scheduler=None, workers=1, cluster=None, cluster_kwargs=None, retries=2, progress=True):
    """Predict every frame of every input; resumable; returns a :class:`BatchSummary`.

    Parameters
    ----------
    inputs : list of paths (TIFF, ``file.h5:/dataset``)
    out_dir : folder for ``parts/`` and the merged CSVs (``<stem>.csv``, ``all_points.csv``)
    model_dir : model folder, None for the shipped default
    scheduler : address of a running dask scheduler (``tcp://host:port``)
    workers : number of local worker processes (1: in this process, no dask), or jobs for ``cluster``
    retries : how often a task whose worker died is tried again
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    tasks, summary.failures = plan(inputs, out_dir, axes=axes, voxel_size_um=voxel_size_um)
    todo = [tk for tk in tasks if not part_is_done(tk.part)]
    summary.frames, summary.skipped = len(tasks), len(tasks) - len(todo)
    kw = dict(model_dir=None if model_dir is None else str(model_dir), axes=axes,
              voxel_size_um=voxel_size_um, predict_kwargs=predict_kwargs)
    bar = tqdm(total=len(todo), desc="frames", unit="frame", disable=not progress or not todo)
    client, cluster_obj = _client(scheduler, workers, cluster, cluster_kwargs)
    try:
        if client is None:
            from kt_stardist.predict import load

            model = load(kw["model_dir"]) if todo else None
            for tk in todo:
                try:
                    run_frame(tk, **kw, model=model)
                    summary.computed += 1
                except KtError as e:
                    summary.failures.append((tk.path, tk.t, str(e)))
                except Exception as e:  # one bad frame does not stop the batch
                    summary.failures.append((tk.path, tk.t, f"{type(e).__name__}: {e}"))
                bar.update()
        else:
            from dask.distributed import as_completed

            futures = {client.submit(run_frame, tk, **kw, key=f"kt-frame-{os.getpid()}-{i}",
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
    summary.outputs, summary.points = merge(tasks, out_dir)
    summary.seconds = time.perf_counter() - t0
    return summary


def merge(tasks, out_dir):
    """Write ``<stem>.csv`` per input and ``all_points.csv`` from the parts that are done.

    Returns ``(paths written, number of points)``. An input with a missing frame still gets its
    file (the summary lists the failure); rerunning the batch fills it in.
    """
    from kt_stardist.io import write_points

    out_dir = Path(out_dir)
    by_input: dict = {}
    for tk in tasks:
        by_input.setdefault(tk.path, []).append(tk)
    written, frames = [], []
    for path, tks in by_input.items():
        parts = [pd.read_csv(tk.part) for tk in sorted(tks, key=lambda k: k.t) if part_is_done(tk.part)]
        if not parts:
            continue
        df = pd.concat(parts, ignore_index=True)
        dest = out_dir / f"{file_stem(path)}.csv"
        write_points(df, dest)
        written.append(str(dest))
        frames.append(df.assign(source=str(path)))
    n = 0
    if frames:
        all_df = pd.concat(frames, ignore_index=True)
        n = len(all_df)
        dest = out_dir / "all_points.csv"
        write_points(all_df.sort_values(["source", "t", "z", "y", "x"], kind="stable"), dest)
        written.append(str(dest))
    return written, n
