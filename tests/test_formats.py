"""OME-Zarr (ome-zarr library) and vendor formats (bioio) through io.read_image / write_image."""

import numpy as np
import pytest

from kt_stardist import io
from kt_stardist.errors import InputError, KtError

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")

VOX = (0.3, 0.13, 0.13)


def _write_ome_zarr(path, data, axes, version="0.4", scale=None, units=None, chunks=None):
    """An OME-Zarr written by the ome-zarr library itself (not by kt-stardist)."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_image(data, g, axes=axes, fmt=fmt, scale=scale, axes_units=units, scale_factors=[2],
                storage_options=dict(chunks=chunks or data.shape))
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_axes_voxel_size_and_lazy_frames(tmp_path, version, rng):
    data = rng.integers(0, 4000, (3, 2, 6, 40, 50), dtype=np.uint16)  # t c z y x
    p = _write_ome_zarr(tmp_path / "movie.ome.zarr", data, "tczyx", version,
                        scale=dict(z=0.3, y=130.0, x=110.0),
                        units=dict(t="second", z="micrometer", y="nanometer", x="nanometer"),
                        chunks=(1, 1, 6, 20, 25))
    im = io.read_image(p, lazy=True)
    assert im.axes == "TCZYX" and im.reader == f"ome-zarr {version}"
    assert im.voxel_size_um == (0.3, 0.13, 0.11)  # nm converted to µm
    assert not isinstance(im.data, np.ndarray) and im.data.shape == (3, 6, 40, 50, 2)
    want = np.moveaxis(data, 1, -1)  # t z y x c
    for t in range(3):
        np.testing.assert_array_equal(im.frame(t), want[t])
    block = im.data[1, 2:5, 10:30, 20:45, 1].compute()
    np.testing.assert_array_equal(block, want[1, 2:5, 10:30, 20:45, 1])
    eager = io.read_image(p)
    assert isinstance(eager.data, np.ndarray)
    np.testing.assert_array_equal(eager.data, want)
    assert "ome-zarr" in im.summary() and "0.3 × 0.13 × 0.11 µm" in im.summary()


def test_ome_zarr_reads_only_the_chunks_of_a_frame(tmp_path, rng):
    """Frame 1's chunks damaged: opening and frame 0 still work (nothing else is read), frame 1
    fails when it is read."""
    data = rng.integers(0, 4000, (2, 5, 32, 32), dtype=np.uint16)
    p = _write_ome_zarr(tmp_path / "m.zarr", data, "tzyx", "0.4", scale=dict(z=0.3, y=0.13, x=0.13),
                        chunks=(1, 5, 32, 32))
    for f in (p / "s0" / "1").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage, not a compressed chunk")
    im = io.read_image(p, lazy=True)
    np.testing.assert_array_equal(im.frame(0)[..., 0], data[0])
    with pytest.raises(Exception):
        im.frame(1)


def test_ome_zarr_voxel_size_without_units_and_axes_that_disagree(tmp_path, rng):
    data = rng.random((5, 16, 16)).astype("f4")
    p = _write_ome_zarr(tmp_path / "a.zarr", data, "zyx", scale=dict(z=0.5, y=0.1, x=0.1))
    assert io.read_image(p).voxel_size_um == (0.5, 0.1, 0.1)  # no units: µm
    q = _write_ome_zarr(tmp_path / "b.zarr", data, "zyx")
    assert io.read_image(q).voxel_size_um is None  # scale all ones, no units: the file does not say
    assert io.read_image(q, voxel_size_um=VOX).voxel_size_um == VOX
    with pytest.raises(InputError, match="the file says its axes are ZYX"):
        io.read_image(p, axes="YXZ")
    assert io.read_image(p, axes="zyx").axes == "ZYX"  # the same axes are fine
    two_d = _write_ome_zarr(tmp_path / "c.zarr", data[0], "yx")
    with pytest.raises(InputError, match="2D image"):
        io.read_image(two_d)
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("x", shape=(4, 4), dtype="f4")
    with pytest.raises(InputError, match="not an OME-Zarr image"):
        io.read_image(tmp_path / "plain.zarr")


def test_write_image_zarr_and_labels_into_an_ome_zarr(tmp_path, rng):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    movie = rng.integers(0, 100, (2, 4, 24, 300), dtype=np.uint16)  # t z y x
    p = tmp_path / "out.ome.zarr"
    io.write_image(p, movie, axes="TZYX", voxel_size_um=VOX)
    back = io.read_image(p)
    assert back.axes == "TZYX" and back.voxel_size_um == VOX
    np.testing.assert_array_equal(back.data[..., 0], movie)
    lab = np.zeros((4, 24, 300), np.int32)
    lab[1:3, 5:9, 100:104] = 7
    for _ in range(2):  # the second write replaces the first
        io.write_image(p / "labels" / "kinetochores", lab, axes="ZYX", voxel_size_um=VOX)
    assert sorted(x.name for x in (p / "labels").iterdir() if not x.name.startswith(".")) == ["kinetochores"]
    nodes = list(Reader(parse_url(str(p)))())  # the ome-zarr reader finds the labels of the image
    label_nodes = [n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(label_nodes) == 1
    np.testing.assert_array_equal(np.asarray(label_nodes[0].data[0]), lab)
    assert io.read_image(p / "labels" / "kinetochores").voxel_size_um == VOX


def test_unknown_and_missing_formats_say_what_to_install(tmp_path, monkeypatch):
    f = tmp_path / "a.xyz"
    f.write_bytes(b"1234")
    with pytest.raises(InputError, match=r"unknown image format '\.xyz'.*kt-stardist\[formats\]"):
        io.read_image(f)
    nd2 = tmp_path / "a.nd2"
    nd2.write_bytes(b"not an nd2 file")
    monkeypatch.setitem(__import__("sys").modules, "bioio", None)  # the extra not installed
    with pytest.raises(KtError) as e:
        io.read_image(nd2)
    assert 'pip install "kt-stardist[formats]"' in str(e.value) and "\n" not in str(e.value)


def test_ome_tiff_series_through_bioio_equals_the_tiff_reader(tmp_path, rng):
    pytest.importorskip("bioio")
    pytest.importorskip("bioio_ome_tiff")
    import tifffile

    data = rng.integers(0, 4000, (2, 7, 2, 30, 40), dtype=np.uint16)  # t z c y x
    p = tmp_path / "cell.ome.tif"
    tifffile.imwrite(p, data, ome=True, metadata=dict(axes="TZCYX", PhysicalSizeZ=300.0, PhysicalSizeZUnit="nm",
                                                      PhysicalSizeY=0.13, PhysicalSizeX=0.13))
    by_tiff = io.read_image(p)
    by_bioio = io.read_image(f"{p}:0", lazy=True)
    assert by_tiff.reader == "ome-tiff" and by_bioio.reader == "bioio-ome-tiff"
    assert by_bioio.axes == "TCZYX" and by_bioio.voxel_size_um == by_tiff.voxel_size_um == VOX
    np.testing.assert_array_equal(np.asarray(by_bioio.data), by_tiff.data)
    with pytest.raises(InputError, match="no scene '3'"):
        io.read_image(f"{p}:3")
    bad = tmp_path / "x.czi"
    bad.write_bytes(b"not a czi" * 10)
    with pytest.raises(InputError, match="x.czi: no installed bioio plugin reads this file"):
        io.read_image(bad)


@pytest.mark.slow
def test_predict_finds_the_same_points_in_ome_zarr_as_in_tiff(tmp_path):
    """Done-when of issue 22: an OME-Zarr written by ome-zarr and the same volume as an ImageJ
    TIFF give the same points through the pipeline (shipped model)."""
    import pandas as pd

    from kt_stardist import pipeline
    from kt_stardist.simulate import simulate_volume

    img, truth = simulate_volume((24, 96, 96), seed=1, snr="easy")[:2]
    vol = np.asarray(img)[..., 0]
    tif = tmp_path / "cell.tif"
    io.write_image(tif, vol, axes="ZYX", voxel_size_um=VOX)
    zp = _write_ome_zarr(tmp_path / "cell.ome.zarr", vol, "zyx", "0.5", scale=dict(z=0.3, y=130.0, x=130.0),
                         units=dict(z="micrometer", y="nanometer", x="nanometer"), chunks=(24, 48, 48))
    out = {}
    for name, path in (("tif", tif), ("zarr", zp)):
        s = pipeline.run([str(path)], out=tmp_path / f"{name}.csv")
        assert not s.failures
        out[name] = pd.read_csv(tmp_path / f"{name}.csv")
    assert len(out["tif"]) > 0.8 * len(truth)
    pd.testing.assert_frame_equal(out["zarr"], out["tif"])


def test_predict_rerun_replaces_labels_out_zarr_and_never_the_input(tmp_path, monkeypatch, capsys):
    """predict --labels-out x.zarr run twice: the second run replaces the store (no temporary
    folder left); a folder that is no zarr store, or the input image itself, is refused in one line."""
    import kt_stardist.model as M
    from kt_stardist.cli import main
    from tests.test_predict import TRUTH, SpotModel, spots

    monkeypatch.setattr(M, "load_model", lambda path=None, weights=None: SpotModel())
    io.write_image(tmp_path / "a.zarr", spots((10, 64, 64), TRUTH, noise=3), axes="ZYX", voxel_size_um=VOX)
    lab = tmp_path / "lab.zarr"
    for prob, n in (("0.6", len(TRUTH)), ("0.99", 0)):  # the second run finds nothing: its labels are empty
        assert main(["predict", str(tmp_path / "a.zarr"), "--out", str(tmp_path / "a.csv"), "--prob-thresh", prob,
                     "--labels-out", str(lab)]) == 0
        assert len(np.unique(io.read_image(lab, check=False).data)) - 1 == n
    inside = tmp_path / "a.zarr" / "labels" / "kt"  # labels of the input OME-Zarr itself, twice
    for _ in range(2):
        assert main(["predict", str(tmp_path / "a.zarr"), "--out", str(tmp_path / "b.csv"), "--prob-thresh", "0.6",
                     "--labels-out", str(inside)]) == 0
    assert len(np.unique(io.read_image(inside).data)) - 1 == len(TRUTH)
    left = [x.name for d in (tmp_path, inside.parent) for x in d.iterdir() if x.name.startswith(".") and x.is_dir()]
    assert [x for x in left if not x.endswith(".lock")] == []  # no temporary or old store left behind
    (tmp_path / "data.zarr").mkdir()
    (tmp_path / "data.zarr" / "notes.txt").write_text("mine")
    capsys.readouterr()
    for target, msg in ((tmp_path / "data.zarr", "not a zarr store"), (tmp_path / "a.zarr", "is the input image")):
        assert main(["predict", str(tmp_path / "a.zarr"), "--out", str(tmp_path / "c.csv"),
                     "--labels-out", str(target)]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "data.zarr" / "notes.txt").read_text() == "mine" and io.read_image(tmp_path / "a.zarr")
