"""Property-based tests of the readers (hypothesis): random bytes, truncated files, odd dtypes
and shapes give either a valid result or a clean one-line :class:`InputError`, never another
exception."""

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kt_stardist.errors import InputError
from kt_stardist.io import read_image, read_points

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _clean(fn, *args, **kw):
    """Run a reader: a result, or an InputError of one line."""
    try:
        return fn(*args, **kw)
    except InputError as e:
        assert "\n" not in str(e) and str(e), repr(e)
        return None


def _valid_image(im):
    assert im.data.ndim == 5 and min(im.data.shape) >= 1
    assert im.voxel_size_um is None or (len(im.voxel_size_um) == 3 and min(im.voxel_size_um) > 0)


@FUZZ
@given(data=st.binary(min_size=0, max_size=4096), suffix=st.sampled_from([".tif", ".tiff", ".h5", ".csv"]))
def test_random_bytes(tmp_path, data, suffix):
    p = tmp_path / f"junk{suffix}"
    p.write_bytes(data)
    if suffix == ".csv":
        df = _clean(read_points, p)
        if df is not None:
            assert {"z", "y", "x"} <= set(df.columns)
    else:
        im = _clean(read_image, f"{p}:/raw" if suffix == ".h5" else p)
        if im is not None:
            _valid_image(im)


@FUZZ
@given(cut=st.floats(0.0, 0.99), dtype=st.sampled_from(["uint8", "uint16", "int16", "float32", "float64"]),
       shape=st.sampled_from([(4, 8, 8), (2, 3, 8, 8), (6, 16, 16)]))
def test_truncated_tiffs(tmp_path, cut, dtype, shape):
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * 200).astype(dtype)
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, arr, imagej=dtype in ("uint8", "uint16", "float32"))
    raw = p.read_bytes()
    p.write_bytes(raw[: int(len(raw) * cut)])
    im = _clean(read_image, p, axes="TZYX" if len(shape) == 4 else None)
    if im is not None:
        _valid_image(im)


@FUZZ
@given(dtype=st.sampled_from(["bool", "int8", "uint32", "int64", "float16", "complex64"]),
       shape=st.sampled_from([(8,), (8, 8), (1, 1, 1), (3, 8, 8), (2, 2, 2, 8, 8), (1, 2, 3, 4, 5, 6)]))
def test_odd_dtypes_and_shapes(tmp_path, dtype, shape):
    rng = np.random.default_rng(1)
    arr = (rng.random(shape) * 3).astype(dtype)
    p = tmp_path / "b.tif"
    tifffile.imwrite(p, arr)
    im = _clean(read_image, p)
    if im is not None:
        _valid_image(im)
        assert np.isfinite(np.asarray(im.data, np.float64)).all()


@FUZZ
@given(rows=st.lists(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                                        st.integers()), min_size=1, max_size=5), min_size=0, max_size=8),
       header=st.sampled_from(["z,y,x", "t,z,y,x", "index,axis-0,axis-1,axis-2", "Tags,a,b", "x", ""]))
def test_odd_csvs(tmp_path, rows, header):
    p = tmp_path / "p.csv"
    p.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    df = _clean(read_points, p)
    if df is not None:
        assert {"z", "y", "x"} <= set(df.columns)
        assert np.isfinite(df[["z", "y", "x"]].to_numpy(float)).all()


def test_csvs_with_a_million_rows_or_columns_are_bounded(tmp_path):
    """10^6 columns are refused in one line without parsing the file; 10^6 rows are read."""
    import time

    wide, tall = tmp_path / "wide.csv", tmp_path / "tall.csv"
    n = 1_000_000
    wide.write_text(",".join(f"c{i}" for i in range(n)) + "\n" + ",".join("1" for _ in range(n)) + "\n")
    tall.write_text("z,y,x\n" + "1.5,2.5,3.5\n" * n)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="columns in the header") as e:
        read_points(wide)
    assert len(str(e.value)) < 200 and time.perf_counter() - t0 < 5
    assert len(read_points(tall)) == n


@pytest.mark.parametrize("kind", ["external_link", "virtual"])
def test_hdf5_links_outside_the_file_are_refused(tmp_path, kind):
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["secret"] = np.ones((4, 8, 8), np.float32)
    p = tmp_path / "a.h5"
    with h5py.File(p, "w") as f:
        if kind == "external_link":
            f["raw"] = h5py.ExternalLink(str(other), "/secret")
        else:
            layout = h5py.VirtualLayout(shape=(4, 8, 8), dtype=np.float32)
            layout[:] = h5py.VirtualSource(str(other), "secret", shape=(4, 8, 8))
            f.create_virtual_dataset("raw", layout)
    with pytest.raises(InputError):
        read_image(f"{p}:/raw")


def test_tiff_header_claiming_a_huge_shape_is_refused_before_reading(tmp_path, capsys):
    p = tmp_path / "huge.tif"
    tifffile.imwrite(p, np.zeros((4, 8, 8), np.uint16))
    with tifffile.TiffFile(p, mode="r+") as tif:
        for page in tif.pages:
            page.tags["ImageWidth"].overwrite(1_000_000)
            page.tags["ImageLength"].overwrite(1_000_000)
    with pytest.raises(InputError, match="header declares .* damaged or hostile"):
        read_image(p)
    assert capsys.readouterr().err == ""  # tifffile's own complaints are not printed


def test_nothing_is_ever_unpickled():
    """No reader of kt-stardist unpickles: no pickle/joblib/torch loads, np.load never with
    allow_pickle, pandas never read_pickle (a source scan of the package)."""
    import re
    from pathlib import Path

    import kt_stardist

    bad = re.compile(r"pickle\.loads?\(|allow_pickle\s*=\s*True|read_pickle\(|joblib\.load\(|torch\.load\(|"
                     r"dill\.load|cloudpickle\.load")
    hits = [f"{p.name}:{i + 1}" for p in Path(kt_stardist.__file__).parent.rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()) if bad.search(line)]
    assert hits == []
