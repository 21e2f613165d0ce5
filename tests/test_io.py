import os

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile

from kt_stardist import io
from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.errors import InputError


def _files(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_on_success(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with io.atomic_write(p, "w") as f:
        f.write("new")
        assert p.read_text() == "old"  # not visible until the block ends
    assert p.read_text() == "new"
    assert _files(tmp_path) == ["a.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask  # not the 0600 of temp files


def test_atomic_write_leaves_nothing_when_writer_raises(tmp_path):
    p = tmp_path / "b.csv"
    with pytest.raises(RuntimeError):
        with io.atomic_write(p, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert _files(tmp_path) == []
    # an existing file is kept as it was
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_write(p, "wb") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert _files(tmp_path) == ["b.csv"] and p.read_text() == "old"


def test_atomic_path_keeps_suffix_and_cleans_up(tmp_path):
    p = tmp_path / "img.ome.tif"
    with io.atomic_path(p) as tmp:
        assert str(tmp).endswith(".ome.tif") and os.path.dirname(tmp) == str(tmp_path)
        tifffile.imwrite(tmp, np.zeros((2, 3, 4), np.uint8))
    assert _files(tmp_path) == ["img.ome.tif"]
    q = tmp_path / "x.h5"
    with pytest.raises(ValueError):
        with io.atomic_path(q) as tmp:
            with h5py.File(tmp, "w") as f:
                f["raw"] = np.zeros(3)
            raise ValueError("boom")
    assert _files(tmp_path) == ["img.ome.tif"]


def test_write_points_is_atomic(tmp_path, monkeypatch):
    df = pd.DataFrame({"z": [1.0], "y": [2.0], "x": [3.0]})

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError):
        io.write_points(df, tmp_path / "p.csv")
    assert _files(tmp_path) == []


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("axes,shape", [
    ("ZYX", (5, 8, 9)), ("TZYX", (2, 5, 8, 9)), ("ZCYX", (5, 2, 8, 9)),
    ("TZCYX", (2, 5, 3, 8, 9)), ("CZYX", (2, 5, 8, 9)),
])
def test_write_read_round_trip(tmp_path, rng, axes, shape):
    data = rng.integers(1, 60000, shape).astype(np.uint16)
    p = tmp_path / "img.tif"
    io.write_image(p, data, axes=axes, voxel_size_um=(0.3, 0.13, 0.11))
    im = io.read_image(p)
    assert im.data.ndim == 5 and im.data.dtype == np.uint16
    assert im.voxel_size_um == pytest.approx((0.3, 0.13, 0.11), rel=1e-6)
    # reorder the original to TZYXC and compare
    expect = data
    for a in "TC":
        if a not in axes:
            expect, axes = expect[None], a + axes
    expect = np.transpose(expect, [axes.index(a) for a in "TZYXC"])
    np.testing.assert_array_equal(im.data, expect)
    assert im.n_frames == expect.shape[0] and im.n_channels == expect.shape[4]
    assert im.shape_zyx == (5, 8, 9)
    assert im.frame(im.n_frames - 1).shape == (5, 8, 9, expect.shape[4])
    assert _files(tmp_path) == ["img.tif"]


def test_write_image_accepts_image_and_casts(tmp_path, rng):
    data = rng.random((4, 6, 7)) * 10  # float64 -> float32
    io.write_image(tmp_path / "a.tif", data, axes="ZYX", voxel_size_um=(1, 0.5, 0.5))
    im = io.read_image(tmp_path / "a.tif")
    assert im.data.dtype == np.float32 and im.axes == "ZYX"
    np.testing.assert_allclose(im.data[0, ..., 0], data, rtol=1e-6)
    io.write_image(tmp_path / "b.tif", im)
    im2 = io.read_image(tmp_path / "b.tif")
    assert im2.voxel_size_um == pytest.approx((1, 0.5, 0.5))
    np.testing.assert_array_equal(im2.data, im.data)


def test_plain_tiff_3d_is_zyx_and_4d_needs_axes(tmp_path, rng):
    tifffile.imwrite(tmp_path / "p3.tif", rng.random((4, 5, 6)).astype("f4"))
    im = io.read_image(tmp_path / "p3.tif")
    assert im.axes == "ZYX" and im.data.shape == (1, 4, 5, 6, 1) and im.voxel_size_um is None
    d4 = rng.random((3, 4, 5, 6)).astype("f4")
    tifffile.imwrite(tmp_path / "p4.tif", d4)
    with pytest.raises(InputError, match=r"p4\.tif.*pass axes"):
        io.read_image(tmp_path / "p4.tif")
    im = io.read_image(tmp_path / "p4.tif", axes="tzyx", voxel_size_um=(0.2, 0.1, 0.1))
    assert im.data.shape == (3, 4, 5, 6, 1) and im.voxel_size_um == (0.2, 0.1, 0.1)
    im = io.read_image(tmp_path / "p4.tif", axes="CZYX")
    assert im.data.shape == (1, 4, 5, 6, 3)
    np.testing.assert_array_equal(im.data[0, ..., 2], d4[2])


def test_override_voxel_size_wins(tmp_path, rng):
    io.write_image(tmp_path / "a.tif", rng.random((3, 4, 5)).astype("f4"), axes="ZYX")
    assert io.read_image(tmp_path / "a.tif").voxel_size_um == pytest.approx(VOXEL_SIZE_UM)
    im = io.read_image(tmp_path / "a.tif", voxel_size_um=(1, 2, 3))
    assert im.voxel_size_um == (1.0, 2.0, 3.0)


def test_ome_tiff_voxel_size(tmp_path, rng):
    p = tmp_path / "a.ome.tif"
    tifffile.imwrite(p, rng.random((2, 4, 5, 6)).astype("f4"), metadata={
        "axes": "TZYX", "PhysicalSizeZ": 0.5, "PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1})
    im = io.read_image(p)
    assert im.axes == "TZYX" and im.data.shape == (2, 4, 5, 6, 1)
    assert im.voxel_size_um == pytest.approx((0.5, 0.1, 0.1))


def test_imagej_nm_unit(tmp_path, rng):
    p = tmp_path / "nm.tif"
    tifffile.imwrite(p, rng.random((1, 3, 1, 4, 5)).astype("f4"), imagej=True,
                     resolution=(1 / 130, 1 / 130), metadata={"spacing": 300, "unit": "nm",
                                                              "axes": "TZCYX"})
    assert io.read_image(p).voxel_size_um == pytest.approx((0.3, 0.13, 0.13))


def test_hdf5_dataset_and_voxel_size(tmp_path, rng):
    p = tmp_path / "v.h5"
    data = rng.random((3, 4, 5)).astype("f4")
    with h5py.File(p, "w") as f:
        f["raw"] = data
        f["raw"].attrs["element_size_um"] = [0.4, 0.2, 0.2]
        f["other"] = data
    im = io.read_image(f"{p}:/raw")
    np.testing.assert_array_equal(im.data[0, ..., 0], data)
    assert im.voxel_size_um == pytest.approx((0.4, 0.2, 0.2))
    with pytest.raises(InputError, match=r"v\.h5.*no HDF5 dataset '/missing'"):
        io.read_image(f"{p}:/missing")
    with pytest.raises(InputError, match=r"name the HDF5 dataset"):
        io.read_image(p)


def test_voxel_size_or_default(tmp_path):
    im = io.Image(np.zeros((1, 2, 3, 4, 1)), None, "ZYX", "img.tif")
    assert io.voxel_size_or_default(im) == VOXEL_SIZE_UM
    assert io.voxel_size_or_default(im, override=[1, 2, 3]) == (1.0, 2.0, 3.0)
    with pytest.raises(InputError, match=r"no voxel size in img\.tif; pass --voxel-size Z Y X"):
        io.voxel_size_or_default(im, require=True)
    im.voxel_size_um = (0.5, 0.1, 0.1)
    assert io.voxel_size_or_default(im, require=True) == (0.5, 0.1, 0.1)
    with pytest.raises(InputError, match="3 positive numbers"):
        io.voxel_size_or_default(im, override=(0, 1, 1))


@pytest.mark.parametrize("make,axes,words", [
    (lambda p: None, None, "no such file"),
    (lambda p: p.write_bytes(b"not a tiff"), None, "cannot read as TIFF"),
    (lambda p: tifffile.imwrite(p, np.arange(20, dtype="f4").reshape(4, 5)), None,
     "2D image (Y, X) given; kt-stardist needs a 3D volume"),
    (lambda p: tifffile.imwrite(p, np.arange(60, dtype="f4").reshape(3, 4, 5)), "TYX",
     "2D image (T, Y, X) given"),
    (lambda p: tifffile.imwrite(p, np.arange(60, dtype="f4").reshape(3, 4, 5)), "TZYX",
     "has 4 letters but the image has 3 dimensions"),
    (lambda p: tifffile.imwrite(p, np.arange(60, dtype="f4").reshape(3, 4, 5)), "ZQX",
     "unknown axis letter"),
    (lambda p: tifffile.imwrite(p, np.full((3, 4, 5), np.nan, "f4")), None, "NaN values"),
    (lambda p: tifffile.imwrite(p, np.full((3, 4, 5), 7, "u2")), None,
     "constant volume (every voxel is 7)"),
])
def test_image_errors(tmp_path, make, axes, words):
    p = tmp_path / "bad.tif"
    make(p)
    with pytest.raises(InputError) as e:
        io.read_image(p, axes=axes)
    msg = str(e.value)
    assert words in msg and "bad.tif" in msg and "\n" not in msg


def test_check_volume_per_frame_and_channel(rng):
    a = rng.random((2, 3, 4, 5, 2)).astype("f4")
    io.check_volume(a, "a")  # fine
    b = a.copy()
    b[1, ..., 1] = 0.5
    with pytest.raises(InputError, match="constant volume in frame 1 channel 1"):
        io.check_volume(b, "b")
    c = a[0, ..., 0].copy()
    c[1, 2, 3] = np.inf
    with pytest.raises(InputError, match="c: image has Inf values"):
        io.check_volume(c, "c")
    with pytest.raises(InputError, match="expected a 3D volume"):
        io.check_volume(np.ones((4, 5)), "d")


# ---------------------------------------------------------------- points


def test_arivis_example(shared_data):
    df = io.read_points(shared_data / "arivis_format_example.csv")
    assert len(df) == 21 and df["t"].tolist() == [0] * 7 + [1] * 7 + [2] * 7
    f0 = df[df.t == 0]
    assert f0["pair_id"].tolist() == [1, 1, 2, 2, 3, 4, 4]
    assert f0["sister"].tolist() == [1, 2, 1, 2, 1, 1, 2]
    assert not ((df.pair_id == 3) & (df.sister == 2)).any()  # Pair3_2 missing everywhere
    row = df.iloc[0]
    assert (row.z, row.y, row.x) == (40.82, 484.21, 475.14)
    assert df["point_id"].tolist() == list(range(1, 22))
    # the same tag is the same kinetochore in every frame
    assert df.groupby("track_id")["tag"].nunique().eq(1).all() and df.track_id.nunique() == 7
    assert "voxel_count" in df.columns
    pd.testing.assert_frame_equal(df, io.read_arivis(shared_data / "arivis_format_example.csv"))


def test_shared_real_csv(shared_data):
    df = io.read_points(shared_data / "real_kinetochores_t00_t04.csv")
    assert df.groupby("t").size().to_dict() == {0: 79, 4: 79}
    assert df["t"].dtype == np.int64 and df["z"].dtype == np.float64
    assert io.points_zyx(df).shape == (158, 3)
    assert io.points_zyx(df).dtype == np.float64


def test_write_points_round_trip(tmp_path, rng):
    df = pd.DataFrame({
        "t": rng.integers(0, 3, 30), "z": rng.random(30) * 60, "y": rng.random(30) * 999,
        "x": rng.random(30) * 999, "prob": rng.random(30), "track_id": np.arange(30),
        "note": ["a"] * 30,
    })
    p = tmp_path / "pts.csv"
    io.write_points(df, p, voxel_size_um=(0.3, 0.13, 0.13))
    back = io.read_points(p)
    assert list(back.columns[:8]) == ["t", "z", "y", "x", "z_um", "y_um", "x_um", "prob"]
    assert "note" in back.columns
    keys = back[["t", "z", "y", "x"]].to_numpy()
    assert (np.lexsort(keys.T[::-1]) == np.arange(30)).all()  # sorted by t, z, y, x
    exp = df.sort_values(["t", "z", "y", "x"]).reset_index(drop=True)
    np.testing.assert_allclose(io.points_zyx(back), io.points_zyx(exp), atol=5e-5)
    np.testing.assert_allclose(back["y_um"], exp["y"] * 0.13, atol=5e-5)
    assert back["track_id"].tolist() == exp["track_id"].tolist()
    assert _files(tmp_path) == ["pts.csv"]


def test_napari_round_trip(tmp_path, rng):
    df = pd.DataFrame({"t": [1, 0, 0], "z": [1.5, 2.25, 0.125], "y": [3.0, 4, 5],
                       "x": [6.0, 7, 8], "prob": [0.9, 0.8, 0.7]})
    p = tmp_path / "n.csv"
    io.write_napari_points(df, p)
    raw = pd.read_csv(p)
    assert list(raw.columns[:5]) == ["index", "axis-0", "axis-1", "axis-2", "axis-3"]
    back = io.read_points(p)
    assert back["t"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(io.points_zyx(back), [[0.125, 5, 8], [2.25, 4, 7], [1.5, 3, 6]])
    # 3 axes: z, y, x
    io.write_napari_points(df.drop(columns="t"), p)
    back = io.read_points(p)
    assert "t" not in back.columns and len(back) == 3


@pytest.mark.parametrize("text,words", [
    ("a,b,c\n1,2,3\n", "unknown points layout"),
    ("z,y,x\n1,2,3\n4,,6\n", "column 'y' has a missing or non-numeric value"),
    ("t,z,y,x\n0,1,2,3\n0,1,abc,3\n", "column 'y' has a missing or non-numeric value 'abc'"),
    ("", "empty file"),
    ("index,axis-0,axis-1\n0,1,2\n", "napari points CSV with 2 axes"),
])
def test_points_errors(tmp_path, text, words):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        io.read_points(p)
    assert words in str(e.value) and "bad.csv" in str(e.value)


def test_points_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: no such file"):
        io.read_points(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="lacks column"):
        io.points_zyx(pd.DataFrame({"z": [1.0]}))


def test_empty_points_round_trip(tmp_path):
    df = pd.DataFrame({"t": pd.Series([], dtype=int), "z": [], "y": [], "x": [], "prob": []})
    io.write_points(df, tmp_path / "e.csv", voxel_size_um=VOXEL_SIZE_UM)
    back = io.read_points(tmp_path / "e.csv")
    assert len(back) == 0 and list(back.columns) == ["t", "z", "y", "x", "z_um", "y_um",
                                                     "x_um", "prob"]
    assert back["prob"].dtype == np.float64 and back["t"].dtype == np.int64
    assert io.points_zyx(back).shape == (0, 3)


def test_lazy_read_gives_the_same_frames_for_tiff_and_hdf5(tmp_path):
    import h5py

    from kt_stardist.io import read_image, write_image

    rng = np.random.default_rng(3)
    data = rng.integers(0, 1000, (4, 5, 16, 16), dtype=np.uint16)  # T Z Y X
    tif = tmp_path / "movie.tif"
    write_image(tif, data, axes="TZYX", voxel_size_um=(0.3, 0.13, 0.13))
    h5 = tmp_path / "movie.h5"
    with h5py.File(h5, "w") as f:
        f["raw"] = data
    eager = read_image(tif)
    for path, axes in ((tif, None), (f"{h5}:/raw", "TZYX")):
        lazy = read_image(path, axes=axes, lazy=True)
        assert not isinstance(lazy.data, np.ndarray)  # nothing read yet
        assert lazy.data.shape == eager.data.shape == (4, 5, 16, 16, 1)
        for t in range(4):
            np.testing.assert_array_equal(lazy.frame(t), eager.frame(t))
    assert read_image(tif, lazy=True).voxel_size_um == (0.3, 0.13, 0.13)



def test_lazy_read_reads_nothing_until_a_frame_is_asked_for(tmp_path):
    # dask's from_array copies numpy arrays and memmaps: a lazily opened movie was read whole
    # (an 18-frame 61 x 1000 x 1000 movie: 2.2 GB on every open, i.e. every frame of a run)
    import tracemalloc

    import dask.array  # noqa: F401  (imported before memory is traced)

    from kt_stardist.io import read_image, write_image
    from kt_stardist.io.images import dask_view
    from kt_stardist.outofcore import as_lazy

    data = np.arange(6 * 8 * 64 * 64, dtype=np.uint16).reshape(6, 8, 64, 64)  # T Z Y X, 393 kB
    tif = tmp_path / "movie.tif"
    write_image(tif, data, axes="TZYX", voxel_size_um=(0.3, 0.13, 0.13))
    tracemalloc.start()
    img = read_image(tif, lazy=True)
    opened = tracemalloc.get_traced_memory()[1]
    frame = img.frame(4)
    tracemalloc.stop()
    assert opened < data.nbytes / 4  # header and graph only (a copy: the whole movie)
    np.testing.assert_array_equal(frame[..., 0], data[4])
    # a view, not a snapshot: what the wrapped array holds when read is what comes out
    a = np.zeros((4, 8, 8), np.float32)
    for lazy in (dask_view(a, (2, 8, 8)), as_lazy(a, (2, 4, 4))):
        a[3, 1, 2] = 7.0
        assert float(lazy[3, 1, 2].compute()) == 7.0
        a[3, 1, 2] = 0.0

def _full_disk(tmp_path):
    """A 64 kB tmpfs (root only), or None where it cannot be mounted."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    return mnt if r.returncode == 0 else None


def test_disk_full_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno
    import os
    import subprocess

    from kt_stardist.errors import OutputError
    from kt_stardist.io import atomic_path, atomic_write, write_points

    df = pd.DataFrame({"z": [1.0], "y": [2.0], "x": [3.0]})
    mnt = _full_disk(tmp_path)
    try:
        where = mnt if mnt is not None else tmp_path
        target = where / "points.csv"
        write_points(df, target)
        before = target.read_bytes()
        if mnt is not None:  # a real full disk: 64 kB cannot hold 1 MB
            with pytest.raises(OutputError, match="cannot write .*No space left on device.*nothing was changed"):
                with atomic_write(target, "w") as f:
                    f.write("z,y,x\n" + "1,2,3\n" * 200_000)
        real_fsync = os.fsync

        def enospc(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", enospc)  # the same where no tmpfs can be mounted
        with pytest.raises(OutputError, match="No space left on device"):
            write_points(pd.concat([df] * 3), target)
        with pytest.raises(OutputError, match="No space left on device"):
            with atomic_path(where / "img.tif") as p:
                open(p, "wb").write(b"x")
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert target.read_bytes() == before  # the previous file is intact
        assert sorted(q.name for q in where.iterdir()) == ["points.csv"]  # no temporary left
        with pytest.raises(ValueError):  # an error of the writer itself is not a write error
            with atomic_write(where / "other.csv", "w"):
                raise ValueError("bad")
    finally:
        if mnt is not None:
            subprocess.run(["umount", str(mnt)], capture_output=True)
