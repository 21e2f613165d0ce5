"""Batch prediction (kt_stardist.pipeline.run on kt_stardist.distributed): same points as one
process, resumable, survives a dead worker.

The model is a tiny random-initialised StarDist3D saved to a folder, its probability threshold
set so that a few dozen points per frame come out: what is tested is the batch machinery
(the same points whichever way the frames are scheduled), not the model's accuracy.
"""

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from kt_stardist import io, pipeline, simulate
from kt_stardist.settings import DetectSettings, PipelineSettings, RefineSettings

SETTINGS = PipelineSettings(detect=DetectSettings(refine=RefineSettings(method="centroid")))


def run_batch(inputs, out_dir, **kw):
    return pipeline.run(inputs, out_dir=out_dir, settings=SETTINGS, progress=False, **kw)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, movies):
    import json

    import keras

    from kt_stardist.configs import load_config
    from kt_stardist.model import build_model, save_weights
    from kt_stardist.normalize import normalize

    d = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    m = build_model(load_config("kt-default"), d / "tiny", n_rays=16, unet_n_depth=1, unet_n_filter_base=4,
                    train_patch_size=(8, 32, 32))
    save_weights(m, "weights_best.h5")
    prob, _ = m.stardist.predict(normalize(io.read_image(movies[0]).frame(0)))
    thr = float(np.quantile(prob, 1 - 40 / prob.size))  # ~40 candidates in a frame
    (d / "tiny" / "thresholds.json").write_text(json.dumps({"prob": thr, "nms": 0.3}))
    return str(d / "tiny")


@pytest.fixture(scope="module")
def movies(tmp_path_factory):
    d = tmp_path_factory.mktemp("movies")
    paths = []
    for i in range(2):
        movie, _ = simulate.simulate_timelapse(3, (20, 80, 80), seed=10 + i, snr="easy")
        p = d / f"cell{i}.tif"
        io.write_image(p, np.clip(movie, 0, 65535).astype(np.uint16), axes="TZYXC")
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def reference(movies, model_dir, tmp_path_factory):
    """Single-process run, the reference the distributed runs must equal."""
    out = tmp_path_factory.mktemp("ref")
    s = run_batch(movies, out, model_dir=model_dir)
    assert s.failures == [] and s.computed == 6 and s.frames == 6
    df = pd.read_csv(out / "all_points.csv")
    assert len(df) >= 12 and set(df["t"]) == {0, 1, 2}
    return df


def _key(df):
    return df.sort_values(["source", "t", "z", "y", "x"]).reset_index(drop=True)[["t", "z", "y", "x", "prob"]]


@pytest.mark.slow
def test_cluster_on_loopback_gives_the_points_of_one_process(movies, model_dir, reference, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        s = run_batch(movies, tmp_path, model_dir=model_dir, scheduler=cluster.scheduler_address)
    assert s.failures == [] and s.computed == 6
    got = pd.read_csv(tmp_path / "all_points.csv")
    pd.testing.assert_frame_equal(_key(got), _key(reference), check_exact=False, atol=1e-3)
    for p in movies:  # one CSV per input too
        assert (tmp_path / (os.path.basename(p)[:-4] + ".csv")).is_file()


@pytest.mark.slow
def test_rerun_recomputes_only_missing_or_corrupt_frames(movies, model_dir, reference, tmp_path):
    s = run_batch(movies, tmp_path, model_dir=model_dir)
    assert s.computed == 6
    parts = sorted((tmp_path / "parts").rglob("t*.csv"))
    assert len(parts) == 6
    parts[1].unlink()                     # a frame lost
    parts[4].write_text("t,z,y\n0,1")     # a frame corrupted (not a points table)
    s = run_batch(movies, tmp_path, model_dir=model_dir)
    assert (s.computed, s.skipped, s.failures) == (2, 4, [])
    got = pd.read_csv(tmp_path / "all_points.csv")
    pd.testing.assert_frame_equal(_key(got), _key(reference), check_exact=False, atol=1e-3)


@pytest.mark.slow
def test_killed_worker_loses_no_frame(movies, model_dir, reference, tmp_path):
    """A worker is killed (SIGKILL) while it is executing a frame task: the task is retried
    elsewhere and the batch ends with every frame once."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        victim = sorted(client.run(os.getpid))[0]
        pid = client.run(os.getpid)[victim]
        killed_during = []

        def executing(dask_worker):
            return sorted(str(ts.key) for ts in dask_worker.state.executing)

        def kill_while_a_task_runs():
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    running = client.run(executing, workers=[victim]).get(victim, [])
                except Exception:
                    return
                if any(k.startswith("kt-frame-") for k in running):
                    os.kill(pid, signal.SIGKILL)  # a worker dies in the middle of a frame
                    killed_during.extend(running)
                    return
                time.sleep(0.02)

        th = threading.Thread(target=kill_while_a_task_runs, daemon=True)
        th.start()
        s = run_batch(movies, tmp_path, model_dir=model_dir, scheduler=cluster.scheduler_address, retries=3)
        th.join(5)
    assert killed_during, "the worker was not killed while executing a task"
    if s.failures:  # a task on the dead worker may still be reported lost: a rerun finishes it
        s = run_batch(movies, tmp_path, model_dir=model_dir)
    assert s.failures == []
    got = pd.read_csv(tmp_path / "all_points.csv")
    assert not got.duplicated(["source", "t", "z", "y", "x"]).any()
    pd.testing.assert_frame_equal(_key(got), _key(reference), check_exact=False, atol=1e-3)


def test_bad_file_does_not_stop_the_batch(movies, model_dir, tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    s = run_batch([movies[0], str(bad)], tmp_path / "out", model_dir=model_dir)
    assert s.computed == 3 and len(s.failures) == 1 and "broken.tif" in s.failures[0][2]
    assert (tmp_path / "out" / "cell0.csv").is_file()


def test_a_corrupt_frame_fails_alone_and_is_named(movies, model_dir, tmp_path, capsys):
    """A frame of NaNs in the middle of a movie: that frame fails with one line naming it, the
    others are written, run.json lists it as missing, and the command exits 1."""
    import json

    from kt_stardist.cli import main

    movie = io.read_image(movies[0]).data.astype(np.float32)
    movie[1] = np.nan
    bad = tmp_path / "nanframe.tif"
    io.write_image(bad, movie, axes="TZYXC")
    out = tmp_path / "points.csv"
    rc = main(["predict", str(bad), "--out", str(out), "--model", model_dir, "--refine", "centroid"])
    assert rc == 1
    err = capsys.readouterr().err
    assert any("frame 1" in line and "NaN" in line for line in err.splitlines()), err
    df = pd.read_csv(out)
    assert set(df.t) <= {0, 2} and len(df)
    assert json.loads(pipeline.run_json_path(out).read_text())["frames_missing"] == [1]


def _predict_cmd(movie, model_dir, *out):
    import sys

    return [sys.executable, "-m", "kt_stardist", "--quiet", "predict", movie, *out, "--model", model_dir,
            "--refine", "centroid"]


def _points(path):
    df = pd.read_csv(path)
    return df.sort_values(["t", "z", "y", "x"]).reset_index(drop=True)[["t", "z", "y", "x", "prob"]]


@pytest.mark.slow
def test_kill_9_of_predict_leaves_no_partial_output_and_a_rerun_completes(movies, model_dir, tmp_path):
    import subprocess

    ref = tmp_path / "ref.csv"
    pipeline.run([movies[0]], out=ref, model_dir=model_dir, settings=SETTINGS, progress=False)
    out = tmp_path / "points.csv"
    proc = subprocess.Popen(_predict_cmd(movies[0], model_dir, "--out", str(out)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    parts = tmp_path / f".{out.name}.parts"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*/t*.csv")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "predict finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # after the first frame, in the middle of the next
    proc.wait()
    done = list(parts.glob("*/t*.csv"))
    assert 1 <= len(done) < 3 and not out.exists()  # no output, and every part present is whole
    for p in done:
        assert len(pd.read_csv(p).columns) >= 4
    assert subprocess.run(_predict_cmd(movies[0], model_dir, "--out", str(out)), capture_output=True).returncode == 0
    pd.testing.assert_frame_equal(_points(out), _points(ref), check_exact=False, atol=1e-4)
    assert not parts.exists() and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.slow
def test_two_concurrent_runs_into_one_out_dir(movies, model_dir, tmp_path):
    import subprocess

    ref = tmp_path / "ref"
    run_batch(movies, ref, model_dir=model_dir)
    out = tmp_path / "out"
    procs = [subprocess.Popen(_predict_cmd(movies[0], model_dir, movies[1], "--out-dir", str(out)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    errs = [p.communicate()[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    got = pd.read_csv(out / "all_points.csv")
    assert not got.duplicated(["source", "t", "z", "y", "x"]).any()
    for name in ("cell0.csv", "cell1.csv"):
        pd.testing.assert_frame_equal(_points(out / name), _points(ref / name), check_exact=False, atol=1e-4)


def test_file_stem_scene_names_are_safe(tmp_path):
    """FILE:SCENE inputs (bioio) give file-system-safe, distinct output names and part folders."""
    from kt_stardist.distributed import file_stem, part_path, plan

    assert file_stem("a/cell1.ome.tif") == "cell1" and file_stem("b/movie.h5:/raw") == "movie"
    assert file_stem("c/plate.czi:2") == "plate_2" and file_stem("c/plate.czi") == "plate"
    assert file_stem("x.lif:Position 1") == "x_Position_1" and file_stem("m.ome.tif:1") == "m_1"
    assert file_stem("d/../..") == "image"
    for p in ("c/plate.czi:2", "x.lif:Pos #1", "d/.."):
        assert ":" not in file_stem(p) and part_path(tmp_path, p, 0).parent.parent == tmp_path
    from kt_stardist.errors import InputError

    with pytest.raises(InputError, match="same file name"):  # scene 2 and a file named plate_2
        plan(["c/plate.czi:2", "e/plate_2.tif"], tmp_path)


def test_resume_fingerprint_sees_rewritten_zarr_chunks(tmp_path):
    """A .zarr store whose chunks are rewritten in place (its folder's own mtime unchanged) gets a
    new fingerprint, so its old parts are not reused; an untouched store keeps its fingerprint."""
    from kt_stardist.distributed import file_stat

    store = tmp_path / "cell.zarr"
    chunk = store / "0" / "c" / "0" / "0"
    chunk.mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    (chunk / "0").write_bytes(b"\0" * 64)
    stamp = os.stat(store).st_mtime_ns

    def fp():
        return pipeline._fingerprint(str(store), None, SETTINGS, None, None, False)

    before = fp()
    assert before == fp() and file_stat(store) == [66, os.stat(chunk / "0").st_mtime_ns, 2]
    (chunk / "0").write_bytes(b"\1" * 64)  # same size, new content
    later = os.stat(chunk / "0").st_mtime_ns + 10**9
    os.utime(chunk / "0", ns=(later, later))  # coarse file-system clocks
    os.utime(store, ns=(stamp, stamp))
    assert os.stat(store).st_mtime_ns == stamp and fp() != before
    assert file_stat(tmp_path / "none.zarr") is None
    # FILE:SCENE and file.h5:/dataset are fingerprinted by the file itself
    (tmp_path / "plate.czi").write_bytes(b"x" * 10)
    got = pipeline._fingerprint(str(tmp_path / "plate.czi:2"), None, SETTINGS, None, None, False)
    assert got["input_stat"][0] == 10 and got["dataset"] == "2"
