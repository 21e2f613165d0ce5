import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from kt_stardist.errors import InputError
from kt_stardist.labels import points_outside, points_to_labels

VOX = np.array([0.3, 0.13, 0.13])


@pytest.fixture
def real_t0(shared_data):
    df = pd.read_csv(shared_data / "real_kinetochores_t00_t04.csv")
    return df[df.t == 0][["z", "y", "x"]].to_numpy(float)


def _crop(points):
    """Crop a box around the points (px) with a margin; return shifted points and box shape."""
    lo = np.floor(points.min(0)).astype(int) - 6
    hi = np.ceil(points.max(0)).astype(int) + 7
    return points - lo, tuple(hi - lo)


def _centroids_um(labels, n):
    return np.array(ndimage.center_of_mass(labels > 0, labels, np.arange(1, n + 1))) * VOX


def test_real_frame_full_shape_counts_and_ids(real_t0):
    labels = points_to_labels(real_t0, (61, 1000, 1000))
    assert labels.dtype == np.int32 and labels.shape == (61, 1000, 1000)
    lo, hi = real_t0.min(0).astype(int) - 5, real_t0.max(0).astype(int) + 6
    box = labels[tuple(slice(a, b) for a, b in zip(lo, hi))]
    ids, counts = np.unique(box[box > 0], return_counts=True)
    assert ids.tolist() == list(range(1, 80))
    assert counts.sum() == np.count_nonzero(labels)  # nothing drawn outside the points' box
    # each object's nearest point (by its voxel-centre centroid) is its own row
    cent = _centroids_um(box, 79) + lo * VOX
    d = np.linalg.norm(cent[:, None] - real_t0[None] * VOX, axis=2)
    assert (d.argmin(1) == np.arange(79)).all()


def test_real_frame_subvoxel_centroids(real_t0):
    rng = np.random.default_rng(1)
    pts = real_t0 + rng.uniform(-0.5, 0.5, real_t0.shape)  # sub-voxel positions
    pts, shape = _crop(pts)
    labels = points_to_labels(pts, shape)
    assert len(np.unique(labels)) == 80
    cent = _centroids_um(labels, 79)
    pum = pts * VOX
    dd = np.linalg.norm(pum[:, None] - pum[None], axis=2)
    np.fill_diagonal(dd, np.inf)
    isolated = np.flatnonzero(dd.min(1) > 1.1)  # no other sphere reaches into its own
    assert len(isolated) >= 5
    err = np.linalg.norm(cent[isolated] - pum[isolated], axis=1)
    assert err.max() < 0.05, err
    # closest pair (~0.3 µm): both present, each centroid nearer its own point
    i, j = np.unravel_index(dd.argmin(), dd.shape)
    assert dd[i, j] < 0.5
    for a, b in ((i, j), (j, i)):
        assert np.linalg.norm(cent[a] - pum[a]) < np.linalg.norm(cent[a] - pum[b])
    # overlapping spheres are split: voxels of i are no farther from i than from j
    zz, yy, xx = np.nonzero(labels == i + 1)
    vv = np.stack([zz, yy, xx], 1) * VOX
    assert np.all(np.linalg.norm(vv - pum[i], axis=1) <= np.linalg.norm(vv - pum[j], axis=1) + 1e-9)


def test_sphere_is_physical_and_anisotropic():
    labels = points_to_labels([[10, 20, 20]], (21, 41, 41), radius_um=0.5)
    zz, yy, xx = np.nonzero(labels == 1)
    # 0.5 µm: z within 1.67 px -> 3 slices; y, x within 3.85 px -> 7 px
    assert np.ptp(zz) + 1 == 3 and np.ptp(yy) + 1 == 7 and np.ptp(xx) + 1 == 7
    d = np.sqrt(((zz - 10) * 0.3) ** 2 + ((yy - 20) * 0.13) ** 2 + ((xx - 20) * 0.13) ** 2)
    assert d.max() <= 0.5
    # every voxel within the radius is in
    g = np.indices(labels.shape).reshape(3, -1).T
    dall = np.linalg.norm((g - [10, 20, 20]) * VOX, axis=1)
    assert (dall <= 0.5).sum() == len(zz)
    # isotropic voxels give a round sphere in px
    iso = points_to_labels([[10, 10, 10]], (21, 21, 21), voxel_size_um=(0.13, 0.13, 0.13))
    zz, yy, _ = np.nonzero(iso)
    assert np.ptp(zz) == np.ptp(yy) == 6


def test_touching_pair_both_nonempty_and_ids():
    # two points 0.2 µm apart in x (1.54 px) and a duplicate position: all get voxels
    pts = [[5, 10, 10], [5, 10, 11.54], [5, 10, 11.54]]
    labels = points_to_labels(pts, (11, 21, 25), ids=[7, 3, 9])
    got = set(np.unique(labels)) - {0}
    assert got == {3, 7, 9}
    # with a radius below half a voxel a point still gets its nearest voxel
    tiny = points_to_labels([[2.4, 2.4, 2.6]], (5, 5, 5), radius_um=0.01)
    assert np.count_nonzero(tiny) == 1 and tiny[2, 2, 3] == 1


def test_outside_points_warn_and_skip():
    pts = np.array([[1, 1, 1], [-0.6, 3, 3], [2, 3, 9.5], [2, 3, 9.4]])
    assert points_outside(pts, (5, 6, 10)).tolist() == [False, True, True, False]
    with pytest.warns(UserWarning, match=r"2 point\(s\) outside.*\[12, 13\]"):
        labels = points_to_labels(pts, (5, 6, 10), ids=[11, 12, 13, 14])
    assert set(np.unique(labels)) == {0, 11, 14}


def test_bad_input():
    with pytest.raises(InputError, match="points_px"):
        points_to_labels(np.zeros((3, 2)), (5, 5, 5))
    with pytest.raises(InputError, match="ids"):
        points_to_labels(np.zeros((2, 3)), (5, 5, 5), ids=[1, 1])
    assert points_to_labels(np.zeros((0, 3)), (2, 3, 4)).sum() == 0


def test_cli_labels(tmp_path, capsys):
    from kt_stardist import io as io
    from kt_stardist.cli import main

    pts = tmp_path / "p.csv"
    pts.write_text("t,z,y,x\n0,5,10,10\n0,5,10,30\n0,5,10,99\n2,3,4,5\n")
    out = tmp_path / "labels.tif"
    assert main(["labels", str(pts), "--shape", "10", "20", "40", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "2 objects, 1 points outside the volume: ids 3" in cap.out
    assert "drawing t = 0" in cap.err
    img = io.read_image(out, check=False)
    assert img.shape_zyx == (10, 20, 40)
    np.testing.assert_allclose(img.voxel_size_um, VOX, rtol=1e-5)
    lab = img.data[0, ..., 0]
    assert lab[5, 10, 10] == 1 and lab[5, 10, 30] == 2 and set(np.unique(lab)) == {0, 1, 2}

    # --like takes shape and voxel size from the image; --all-frames writes T = last t + 1
    # (a 3D --like image gives only the shape)
    out4 = tmp_path / "labels4.tif"
    assert main(["labels", str(pts), "--like", str(out), "--all-frames", "--out", str(out4)]) == 0
    stack = io.read_image(out4, check=False)
    assert stack.data.shape[:4] == (3, 10, 20, 40)
    assert stack.data[1].max() == 0 and stack.data[2, 3, 4, 5, 0] == 1
    assert main(["labels", str(pts), "--shape", "10", "20", "40", "--frame", "1",
                 "--out", str(out4)]) == 2
    assert "no points in frame 1" in capsys.readouterr().err
