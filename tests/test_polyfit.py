from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kt_stardist import polyfit
from kt_stardist.defaults import VOXEL_SIZE_UM

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "kt_stardist" / "data" / "real_kinetochores_t00_t04.csv"


def spheres(points, shape, radius_um, voxel=VOXEL_SIZE_UM):
    """Sphere labels (µm radius) around points (px), nearest point wins; independent of kt_stardist.labels."""
    zz, yy, xx = np.indices(shape, dtype=float)
    best = np.full(shape, np.inf)
    lab = np.zeros(shape, np.int32)
    for i, p in enumerate(points, 1):
        d2 = ((zz - p[0]) * voxel[0]) ** 2 + ((yy - p[1]) * voxel[1]) ** 2 + ((xx - p[2]) * voxel[2]) ** 2
        m = (d2 <= radius_um ** 2) & (d2 < best)
        lab[m], best[m] = i, d2[m]
    return lab


def real_points(frame=0):
    df = pd.read_csv(REAL)
    return df.loc[df.t == frame, ["z", "y", "x"]].to_numpy(float)


@pytest.fixture(scope="module")
def real_crop():
    """0.5 µm spheres around the real t=0 positions, cropped with a 16-aligned start (keeps the lattice)."""
    pts = real_points()
    sl = polyfit.crop_to_points(pts, (61, 1000, 1000), (4, 6, 6), align=(1, 16, 16))
    assert all(s.start % 16 == 0 for s in sl[1:])
    off = np.array([s.start for s in sl])
    return spheres(pts - off, tuple(s.stop - s.start for s in sl), 0.5)


@pytest.mark.parametrize("n_rays,aniso", [(32, (2.31, 1, 1)), (128, None)])
def test_fit_equals_stardist(real_crop, n_rays, aniso):
    from stardist import Rays_GoldenSpiral
    from stardist.geometry import relabel_image_stardist3D
    from stardist.matching import matching

    lab = real_crop
    rays = Rays_GoldenSpiral(n_rays, anisotropy=aniso)
    ref = matching(lab, relabel_image_stardist3D(lab, rays), thresh=0).mean_true_score
    got = polyfit.fit_iou(lab, n_rays, aniso)
    assert got["n_fitted"] == len(np.unique(lab)) - 1 == 79
    assert got["mean_iou"] == pytest.approx(ref, abs=1e-6)
    assert 0.5 < got["mean_iou"] < 1


def test_fit_example_and_sampling():
    lab, an = polyfit.example_labels()
    assert an[0] > 1.5  # z coarser, as in StarDist's notebook
    full = polyfit.fit_iou(lab, 32, an)
    ids = polyfit.select_objects(lab, 10, seed=1)
    part = polyfit.fit_iou(lab, 32, an, ids)
    assert part["n_fitted"] == 10 and full["n_fitted"] == 51
    assert abs(part["mean_iou"] - full["mean_iou"]) < 0.1


def test_grid_fractions_on_real_positions(real_crop):
    f1 = polyfit.grid_fractions(real_crop, (1, 1, 1), (2.31, 1, 1))
    assert f1 == dict(learnable=1.0, any_on_grid=1.0, centre_on_grid=1.0)
    f16 = polyfit.grid_fractions(real_crop, (1, 16, 16), (2.31, 1, 1))
    assert f16["centre_on_grid"] < 0.05 and f16["learnable"] < 0.15 and f16["any_on_grid"] < 0.3
    f2 = polyfit.grid_fractions(real_crop, (1, 2, 2), (2.31, 1, 1))
    assert f2["learnable"] >= 0.95  # grid (1,2,2) trains; its strict centre fraction is ~1/4
    assert 0.1 < f2["centre_on_grid"] < 0.4


def test_centre_on_grid_definition():
    lab = np.zeros((8, 32, 32), np.int32)
    lab[2, 4, 8] = 1   # on the (1,4,4) lattice
    lab[2, 5, 8] = 0
    lab[4, 6, 6] = 2   # off it (6 % 4)
    f = polyfit.grid_fractions(lab, (1, 4, 4))
    assert f["centre_on_grid"] == 0.5 and f["any_on_grid"] == 0.5


def test_sweep_and_recommend(real_crop):
    t = polyfit.sweep({0.5: real_crop}, rays=(32, 64), anisotropies=[(2.31, 1, 1)],
                      grids=[(1, 1, 1), (1, 2, 2), (1, 16, 16)], max_objects=30)
    assert list(t.columns) == polyfit.COLUMNS and len(t) == 6
    assert (t["n_fitted"] == 30).all() and (t["n_objects"] == 79).all()
    # fit depends on rays, not grid; learnability on grid, not rays
    assert t.groupby("n_rays")["mean_iou"].nunique().eq(1).all()
    assert t.groupby("grid")["learnable"].nunique().eq(1).all()
    row, text = polyfit.recommend(t, min_iou=0.0)
    assert row["n_rays"] == 32 and row["grid"] == "1,2,2" and "learnability" in text
    row, text = polyfit.recommend(t, min_iou=0.999)
    assert text.startswith("nothing") and row["learnable"] == 1.0


def test_cli_labels_writes_csv_and_png(tmp_path, real_crop, capsys):
    import tifffile

    from kt_stardist.cli import main

    lab_path = tmp_path / "lab.tif"
    tifffile.imwrite(lab_path, real_crop.astype(np.uint16))
    csv, png = tmp_path / "t.csv", tmp_path / "p.png"
    rc = main(["polyfit", "--labels", str(lab_path), "--rays", "32", "--grids", "1,1,1", "1,16,16",
               "--max-objects", "20", "--csv", str(csv), "--plot", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "recommended" in out and "20 randomly sampled objects" in out
    t = pd.read_csv(csv)
    assert len(t) == 4 and set(t["grid"]) == {"1,1,1", "1,16,16"}
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_points(tmp_path, capsys):
    import kt_stardist.labels  # noqa: F401
    from kt_stardist.cli import main

    rc = main(["polyfit", "--points", str(REAL), "--shape", "61", "1000", "1000", "--radii", "0.5",
               "--rays", "32", "--anisotropy", "voxel", "--grids", "1,1,1", "1,2,2"])
    assert rc == 0
    assert "79 points" in capsys.readouterr().out


def test_cli_errors(capsys):
    from kt_stardist.cli import main

    assert main(["polyfit", "--example", "--anisotropy", "a,b"]) == 2
    assert "--anisotropy" in capsys.readouterr().err
