"""The library pipeline: images in, points (pairs, tracks), ``run.json`` and a report out.

::

    image files ─ one task per frame (resumable parts, in this process or on dask)
      ─ predict.detect_frame ─▶ parts/<stem>/t00000.csv (+ .json: warnings, timings)
      ─ merge per image ─ pairs ─ tracks ─▶ <points>.csv + <points>.run.json (+ labels, report)

:func:`run` is what ``kt-stardist predict`` runs, with or without ``--out-dir``, with one worker
or a cluster: every path writes the same files with the same columns (``t`` always, 3D volumes
included). :func:`find_points` is the in-memory version (one :class:`kt_stardist.io.Image`,
no files) used by the napari widget and scripts. Both detect through
:func:`kt_stardist.predict.detect`.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kt_stardist import __version__
from kt_stardist.distributed import BatchSummary, file_stem, part_is_done, plan, run_tasks
from kt_stardist.errors import InputError
from kt_stardist.settings import PipelineSettings, from_dict, to_dict

__all__ = ["check_outputs", "find_points", "iter_find_points", "postprocess", "run", "run_frame", "run_json_path", "RUN_JSON"]

#: the run record of a batch (``--out-dir``), beside the per-image CSVs
RUN_JSON = "run.json"


def postprocess(df, settings: PipelineSettings, voxel_size_um, image=None):
    """Sister pairs and tracks on a whole image's points (``t`` column), as asked (tracks by
    default on a time-lapse: :meth:`PipelineSettings.tracks_for` of ``image``'s frames, else of
    the frames in ``df``); with tracks, ``settings.recover`` and ``image`` (the
    :class:`kt_stardist.io.Image` the points come from, a time-lapse) also track-aided recovery in
    its spot channel (``recovered`` column)."""
    if settings.pairs and len(df):
        from kt_stardist.pairs import assign_pairs

        df = assign_pairs(df, voxel_size_um=voxel_size_um)
    n_frames = image.n_frames if image is not None else (int(df["t"].max()) + 1 if len(df) else 0)
    if settings.tracks_for(n_frames) and len(df):
        from kt_stardist.tracks import link_and_recover

        recover = settings.recover and image is not None and image.n_frames > 1
        movie = image.data[..., settings.channel or 0] if recover else None
        df = link_and_recover(df, voxel_size_um, movie, settings.recovery)
    return df


def iter_find_points(model, image, settings: PipelineSettings | None = None, show_progress=False):
    """Generator: :func:`find_points` step by step (napari's progress bar), yielding
    ``(done, total, message)`` before each frame and before pairs/tracks; returns what
    :func:`find_points` returns."""
    from kt_stardist.predict import iter_detect_image

    settings = settings or PipelineSettings()
    vs = image.voxel_size_um or model.voxel_size_um
    n = image.data.shape[0]
    steps = iter_detect_image(model, image, settings.detect, settings.channel, vs, show_progress)
    while True:
        try:
            t, _ = next(steps)
        except StopIteration as stop:
            df, dets = stop.value
            break
        yield t, n + 1, f"frame {t + 1} of {n}" if n > 1 else "finding spots"
    yield n, n + 1, "sister pairs and tracks" if (settings.pairs or settings.tracks_for(n)) else "done"
    return postprocess(df, settings, vs, image), dets


def find_points(model, image, settings: PipelineSettings | None = None, show_progress=True):
    """Points of every frame of an in-memory :class:`kt_stardist.io.Image` (then pairs, tracks):
    ``(DataFrame, [Detection per frame])``. :func:`iter_find_points` is the same, step by step."""
    from kt_stardist.predict import detect_image

    settings = settings or PipelineSettings()
    vs = image.voxel_size_um or model.voxel_size_um
    df, dets = detect_image(model, image, settings.detect, settings.channel, vs, show_progress)
    return postprocess(df, settings, vs, image), dets


# --------------------------------------------------------------------------------------------
# one frame (runs on a worker)
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _cached_model(model_dir):
    """The model of a worker process, loaded once and kept."""
    from kt_stardist.model import load_model

    return load_model(model_dir)


def run_frame(task, model_dir=None, axes=None, voxel_size_um=None, settings=None, labels=False, model=None):
    """Detect one frame and write its part atomically (sidecar JSON and labels first, the CSV,
    which marks the part done, last); returns ``(n_points, seconds)``. ``settings`` is a
    :class:`PipelineSettings` or its dict."""
    from kt_stardist.io import atomic_write, read_image, write_points
    from kt_stardist.predict import detect_frame, label_image

    t0 = time.perf_counter()
    st = settings if isinstance(settings, PipelineSettings) else from_dict(PipelineSettings, settings or {})
    if model is None:
        model = _cached_model(None if model_dir is None else str(model_dir))
    image = read_image(task.path, axes=axes, voxel_size_um=voxel_size_um, lazy=True)
    det = detect_frame(model, image, task.t, st.detect, st.channel)
    part = Path(task.part)
    if labels:
        lab = label_image(model, det)
        with atomic_write(part.with_suffix(".labels.npz")) as f:
            np.savez_compressed(f, labels=lab)
    d = det.diagnostics
    seconds = dict(d["seconds"], frame=time.perf_counter() - t0)  # frame: read, detect, labels, all
    meta = dict(t=task.t, warnings=det.warnings, n_near=det.n_near, n_detections=d["n_detections"],
                n_split=d["n_split"], n_duplicates=d.get("n_duplicates", 0), n_confirmed=d.get("n_confirmed", 0),
                n_extended=d.get("n_extended", 0),
                n_blocks=d["n_blocks"], prob_thresh=det.prob_thresh, threshold_by=d.get("threshold_by"),
                seconds=seconds,
                defects=[len(x) for x in (det.prepared.defects or [])])
    if d.get("psf_note"):  # refine spline: the frame's measured PSF (merged per image by run)
        meta["psf_note"] = d["psf_note"]
        if d.get("psf") is not None:
            d["psf"].save(part.with_suffix(".psf.npz"))
    if d.get("psf_bias_note"):  # refine gauss: the measured PSF's bias taken off the fits, or why not
        meta["psf_bias"] = dict(nm=d.get("psf_bias_nm"), note=d["psf_bias_note"])
    with atomic_write(part.with_suffix(".json"), "w") as f:
        json.dump(meta, f, default=float)
    write_points(det.points, part, voxel_size_um=det.prepared.image_voxel_um)
    n = len(det.points)
    del det, image
    # the frame's arrays are also reachable from reference cycles (dask read graphs, TensorFlow
    # traces of new block shapes) that only a full collection frees: without this, an 18-frame
    # 61 x 1000 x 1000 run held several frames at once (RSS 6-11 GB instead of ~3)
    gc.collect()
    return n, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# a whole run
# --------------------------------------------------------------------------------------------

def run_json_path(csv_path) -> Path:
    """``points.csv`` → ``points.run.json`` (the record beside it)."""
    p = Path(csv_path)
    return p.with_name(p.stem + ".run.json")


def _model_record(model_dir):
    from kt_stardist.model import DEFAULT_MODEL_DIR, model_folder
    from kt_stardist.model.info import read_info, read_thresholds

    folder = model_folder(model_dir)
    info, th = read_info(folder), read_thresholds(folder)
    return dict(folder=str(folder.resolve()), name=info.name, channels=info.channels,
                voxel_size_um=list(info.voxel_size_um), thresholds=dict(prob=th.prob, nms=th.nms),
                shipped=folder.resolve() == DEFAULT_MODEL_DIR.resolve(),
                validation=info.validation), info, th


def check_outputs(out, out_dir, n_inputs, labels_out, inputs=()):
    """Refuse impossible output arguments (one line) before any work. An existing OME-Zarr
    ``labels_out`` is replaced (:func:`kt_stardist.io.ngff.check_ngff_output`), never an input."""
    from kt_stardist.validate import check_output_dir, check_output_file

    if (out is None) == (out_dir is None):
        raise InputError("give exactly one of --out FILE.csv or --out-dir DIR")
    if out is not None and n_inputs > 1:
        raise InputError(f"--out takes one IMAGE, {n_inputs} given; use --out-dir DIR")
    if labels_out is not None and n_inputs > 1:
        raise InputError("--labels-out takes one IMAGE")
    if out is not None:
        check_output_file(out, "--out")
    else:
        check_output_dir(out_dir, "--out-dir")
    if labels_out is not None:
        from kt_stardist.distributed import source_of
        from kt_stardist.io.ngff import check_ngff_output, is_ngff_target

        (check_ngff_output if is_ngff_target(labels_out) else check_output_file)(labels_out, "--labels-out")
        if any(source_of(p)[0].resolve() == Path(labels_out).resolve() for p in inputs):
            raise InputError(f"--labels-out {labels_out}: is the input image, which it would replace; choose "
                             "another name (for an OME-Zarr input: IMAGE.zarr/labels/NAME)")


def _fingerprint(path, model_dir, settings, axes, voxel_size_um, labels) -> dict:
    """What a part depends on: the input file or store (size, mtime: :func:`distributed.file_stat`),
    the model's weights and thresholds, the detection settings and channel (not pairs, tracks,
    recovery: they follow the merge) and reading options. Parts made under another fingerprint
    are discarded."""
    from kt_stardist.distributed import file_stat, source_of
    from kt_stardist.model import model_folder

    folder = model_folder(model_dir)
    src, inner = source_of(path)
    return dict(input=str(src.resolve()), input_stat=file_stat(src), dataset=inner,
                model=str(folder.resolve()), weights=[file_stat(folder / w) for w in ("weights_best.h5", "thresholds.json")],
                settings=dict(detect=to_dict(settings.detect), channel=settings.channel), axes=axes,
                voxel_size_um=None if voxel_size_um is None else list(voxel_size_um),
                labels=bool(labels), version=__version__)


def _reset_stale_parts(tasks, fingerprints):
    """Remove the parts of every input whose fingerprint changed since they were made; write the
    current fingerprints."""
    import shutil

    for path, fp in fingerprints.items():
        stem_dir = next((Path(tk.part).parent for tk in tasks if tk.path == path), None)
        if stem_dir is None:
            continue
        f = stem_dir / "fingerprint.json"
        try:
            old = json.loads(f.read_text()) if f.is_file() else None
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(fp)):
            if stem_dir.is_dir():
                shutil.rmtree(stem_dir)
            stem_dir.mkdir(parents=True, exist_ok=True)
            _write_json(f, fp)


def _merge_image(path, tasks, parts_ok):
    frames = [pd.read_csv(tk.part) for tk in sorted(tasks, key=lambda k: k.t) if parts_ok(tk)]
    metas = []
    for tk in tasks:
        p = Path(tk.part).with_suffix(".json")
        if p.is_file():
            try:
                metas.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                pass
    df = pd.concat(frames, ignore_index=True) if frames else None
    return df, metas


def _image_warnings(metas, model_info, th_prob, settings):
    """One calibration warning for the whole image (summed over frames; no lower threshold
    suggested when a frame's texture warning speaks), plus the frames' other warnings without
    repeats (a camera defect is the same in every frame)."""
    from kt_stardist.predict import calibration_warning, texture_warning

    out, seen = [], set()
    for m in metas:
        for w in m.get("warnings", []):
            if "just below the probability threshold" in w:
                continue
            key = w.split(": ", 1)[-1] if w.startswith("frame ") else w
            if key not in seen:
                seen.add(key)
                out.append(key)
    near = sum(m.get("n_near", 0) for m in metas)
    above = sum(m.get("n_detections", 0) for m in metas)
    used = [m["prob_thresh"] for m in metas if m.get("prob_thresh") is not None]  # per frame (adaptive)
    prob = float(np.median(used)) if used else (settings.detect.prob_thresh or th_prob)
    textured = any(texture_warning(m.get("n_extended", 0), m.get("n_detections", 0)) for m in metas)
    w = calibration_warning(near, above, prob, model_info.validation.get("near_ratio"), settings.detect.near_band,
                            suggest=not textured)
    return out + ([w] if w else [])


def run(inputs, *, out=None, out_dir=None, model_dir=None, settings: PipelineSettings | None = None, axes=None,
        voxel_size_um=None, labels_out=None, report_dir=None, workers=1, scheduler=None, cluster=None,
        cluster_kwargs=None, retries=2, progress=True, command=None) -> BatchSummary:
    """Detect (then pair and track) every frame of every input; resumable; returns a summary.

    Outputs: with ``out`` (one input) ``out`` and ``<out stem>.run.json``, the parts in a hidden
    ``.<out name>.parts/`` folder beside it, removed when the run completes; with ``out_dir``
    ``<stem>.csv`` and ``<stem>.run.json`` per input, ``all_points.csv`` (with ``source``),
    ``run.json`` and ``parts/``. ``labels_out``: an int32 label image (TZYX). ``report_dir``: the
    HTML report (per input in ``report_dir/<stem>/`` with several inputs). Every file is written
    atomically; an interrupted run is finished by running it again. Runs into the same output
    hold a lock on it (a hidden ``.lock`` file beside it) and so wait for each other.
    """
    check_outputs(out, out_dir, len([str(p) for p in inputs]), labels_out, inputs)
    if model_dir is not None:  # a shipped model's name (--model temporal) becomes its folder
        from kt_stardist.model import model_folder

        model_dir = str(model_folder(model_dir))
    lock = Path(out).parent / f".{Path(out).name}.lock" if out is not None else Path(out_dir) / ".lock"
    with _exclusive(lock):  # concurrent runs into the same output wait for each other
        return _run(inputs, out=out, out_dir=out_dir, model_dir=model_dir, settings=settings, axes=axes,
                    voxel_size_um=voxel_size_um, labels_out=labels_out, report_dir=report_dir, workers=workers,
                    scheduler=scheduler, cluster=cluster, cluster_kwargs=cluster_kwargs, retries=retries,
                    progress=progress, command=command)


@contextlib.contextmanager
def _exclusive(path):
    """An exclusive lock on ``path`` (created, kept) for the duration of the block (POSIX
    ``flock``; released if the process dies). Where ``fcntl`` does not exist, no lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run(inputs, *, out, out_dir, model_dir, settings, axes, voxel_size_um, labels_out, report_dir, workers,
         scheduler, cluster, cluster_kwargs, retries, progress, command) -> BatchSummary:
    """:func:`run`, with the output locked."""
    import shutil

    from kt_stardist.io import write_points

    t_start = time.perf_counter()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    settings = settings or PipelineSettings()
    inputs = [str(p) for p in inputs]
    record, info, th = _model_record(model_dir)
    if out is not None:
        out = Path(out)
        parts_dir = out.parent / f".{out.name}.parts"
    else:
        out_dir = Path(out_dir)
        parts_dir = out_dir / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    tasks, summary.failures = plan(inputs, parts_dir, axes=axes, voxel_size_um=voxel_size_um)
    labels = labels_out is not None

    def done(tk):
        return part_is_done(tk.part) and (not labels or Path(tk.part).with_suffix(".labels.npz").is_file())

    _reset_stale_parts(tasks, {p: _fingerprint(p, model_dir, settings, axes, voxel_size_um, labels)
                               for p in {tk.path for tk in tasks}})
    if labels:  # a part without its label image is not done
        for tk in tasks:
            if part_is_done(tk.part) and not done(tk):
                Path(tk.part).unlink()
    fn_kwargs = dict(model_dir=None if model_dir is None else str(model_dir), axes=axes,
                     voxel_size_um=voxel_size_um, settings=to_dict(settings), labels=labels)

    def local_model():
        from kt_stardist.model import load_model

        return load_model(model_dir)

    run_tasks(tasks, run_frame, fn_kwargs, local_model, scheduler, workers, cluster, cluster_kwargs, retries,
              progress, summary)

    from kt_stardist.io import read_image

    by_input = {}
    for tk in tasks:
        by_input.setdefault(tk.path, []).append(tk)
    all_frames, records = [], []
    for path, tks in by_input.items():
        df, metas = _merge_image(path, tks, done)
        if df is None:
            continue
        image = read_image(path, axes=axes, voxel_size_um=voxel_size_um, lazy=True)
        vs = image.voxel_size_um or tuple(info.voxel_size_um)
        df = postprocess(df, settings, vs, image)
        dest = out if out is not None else out_dir / f"{file_stem(path)}.csv"
        warnings = _image_warnings(metas, info, th.prob, settings)
        summary.warnings += [f"{path}: {w}" for w in warnings]
        missing = sorted(tk.t for tk in tks if not done(tk))
        rec = dict(kt_stardist_version=__version__, command=command, started=started, input=path,
                   image=dict(shape_tzyxc=list(image.data.shape), axes=image.axes,
                              voxel_size_um=list(vs),
                              voxel_size_from="--voxel-size" if voxel_size_um is not None else
                              ("file" if image.voxel_size_um is not None else "model default")),
                   model=record, settings=to_dict(settings), frames=len(tks), frames_missing=missing,
                   points=int(len(df)), tracked=settings.tracks_for(image.n_frames), warnings=warnings,
                   seconds_per_frame=_stage_seconds(metas), output=str(dest),
                   prob_thresh=_thresholds_used(metas, th.prob),
                   duplicates_dropped=int(sum(m.get("n_duplicates", 0) for m in metas)),
                   confirmed=int(sum(m.get("n_confirmed", 0) for m in metas)),
                   refused_extended=int(sum(m.get("n_extended", 0) for m in metas)))
        if "recovered" in df.columns:  # track-aided recovery ran
            rec["recovered"] = int(df["recovered"].sum())
            summary.recovered = (summary.recovered or 0) + rec["recovered"]
        write_points(df, dest, voxel_size_um=vs)
        bias = {str(m["t"]): m["psf_bias"] for m in metas if "psf_bias" in m and "t" in m}
        if bias:
            rec["psf_bias"] = bias
        if settings.detect.refine.method == "spline":
            from kt_stardist.predict.psf import merge_frames

            notes = {m["t"]: m.get("psf_note") for m in metas if "t" in m}
            rec["psf"] = merge_frames([(tk.t, Path(tk.part).with_suffix(".psf.npz"), notes.get(tk.t)) for tk in tks],
                                      Path(dest).with_suffix(".psf.npz"))
        if labels:
            _write_labels(tks, labels_out, image, vs)
            rec["labels"] = str(labels_out)
        if report_dir is not None:
            rdir = Path(report_dir) if len(by_input) == 1 else Path(report_dir) / file_stem(path)
            from kt_stardist.report import write_report

            write_report(rdir, image.data, vs, df, meta=dict(model=record["name"], thresholds=record["thresholds"],
                                                             command=command or "", image=path),
                         title=f"kt-stardist: {Path(path).name}")
            rec["report"] = str(rdir / "index.html")
        rec["seconds"] = round(time.perf_counter() - t_start, 2)
        _write_json(run_json_path(dest), rec)
        summary.outputs.append(str(dest))
        all_frames.append(df.assign(source=path))
        records.append(rec)
    summary.points = int(sum(len(f) for f in all_frames))
    if out_dir is not None and all_frames:
        dest = out_dir / "all_points.csv"
        write_points(pd.concat(all_frames, ignore_index=True).sort_values(["source", "t", "z", "y", "x"],
                                                                          kind="stable"), dest)
        summary.outputs.append(str(dest))
        _write_json(out_dir / RUN_JSON, dict(kt_stardist_version=__version__, command=command, started=started,
                                             inputs=inputs, model=record, settings=to_dict(settings),
                                             failures=[list(f) for f in summary.failures],
                                             outputs=summary.outputs, seconds=round(time.perf_counter() - t_start, 2)))
    if out is not None and not summary.failures and all(done(tk) for tk in tasks):
        shutil.rmtree(parts_dir, ignore_errors=True)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _thresholds_used(metas, stored) -> dict:
    """The probability thresholds the frames used (:func:`kt_stardist.predict.adaptive_threshold`):
    the model's ``stored`` one, the median and range used, and how many frames lowered it."""
    used = [m["prob_thresh"] for m in metas if m.get("prob_thresh") is not None]
    by = [m.get("threshold_by") for m in metas]
    return dict(stored=float(stored), median=float(np.median(used)) if used else None,
                min=float(min(used)) if used else None, max=float(max(used)) if used else None,
                frames_lowered_into_gap=int(sum(b == "gap" for b in by)))


def _stage_seconds(metas) -> dict:
    """Median seconds per step over the frames."""
    keys = sorted({k for m in metas for k in m.get("seconds", {})})
    return {k: round(float(np.median([m["seconds"].get(k, 0.0) for m in metas])), 3) for k in keys}


def _write_json(path, obj):
    from kt_stardist.model.info import write_json

    write_json(path, obj)


def _write_labels(tasks, path, image, voxel_size_um):
    from kt_stardist.io import write_image

    T = image.n_frames
    lab = np.zeros((T,) + image.shape_zyx, np.int32)
    for tk in tasks:
        with np.load(Path(tk.part).with_suffix(".labels.npz")) as z:
            lab[tk.t] = z["labels"]
    write_image(path, lab if T > 1 else lab[0], axes="TZYX" if T > 1 else "ZYX", voxel_size_um=voxel_size_um)
