"""napari plugin without napari: reader/writer round trip, what the widgets run (layers to px and
voxel sizes, the child process), and the npe2 manifest. In a real viewer: test_napari_viewer.py."""

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kt_stardist import napari_plugin as nap
from kt_stardist.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "kt_stardist" / "napari.yaml"


def _points(n_t=3):
    rows = []
    for t in range(n_t):
        for k in range(2):
            for s in (1, 2):
                rows.append(dict(t=t, z=5.25 + k, y=10.5 + 3 * k + 0.5 * t, x=20.125 + 7 * (s - 1),
                                 prob=0.5 + 0.1 * k, pair_id=k, sister=s, track_id=2 * k + s - 1))
    return pd.DataFrame(rows)


def test_points_reader_layers(tmp_path):
    from kt_stardist import io

    io.write_points(_points(), tmp_path / "pred.csv", voxel_size_um=(0.3, 0.13, 0.13))
    reader = nap.get_points_reader(str(tmp_path / "pred.csv"))
    assert reader is not None
    layers = reader(str(tmp_path / "pred.csv"))
    assert [kind for _, _, kind in layers] == ["points", "tracks"]
    (pts, meta, _), (tracks, tmeta, _) = layers
    assert pts.shape == (12, 4) and meta["metadata"]["axes"] == "tzyx" and meta["name"] == "pred"
    assert sorted(meta["properties"]) == ["pair_id", "prob", "sister", "track_id"]
    np.testing.assert_allclose(pts[:, 1:], _points().sort_values(["t", "z", "y", "x"])[["z", "y", "x"]].to_numpy())
    # tracks: (track_id, t, z, y, x), 4 tracks of 3 frames, sorted by track then time
    assert tracks.shape == (12, 5)
    np.testing.assert_array_equal(tracks[:, 0], np.repeat([0, 1, 2, 3], 3))
    np.testing.assert_array_equal(tracks[:, 1], np.tile([0, 1, 2], 4))


def test_points_reader_declines_other_files(tmp_path):
    (tmp_path / "napari.csv").write_text("index,axis-0,axis-1,axis-2\n0,1,2,3\n")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert nap.get_points_reader(str(tmp_path / "napari.csv")) is None  # napari's own format: napari reads it
    assert nap.get_points_reader(str(tmp_path / "other.csv")) is None
    assert nap.get_points_reader(str(tmp_path / "img.tif")) is None
    assert nap.get_points_reader([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) is None


def test_writer_reader_round_trip(tmp_path):
    df = _points()
    (data, meta, kind), *_ = nap.points_layers(df, "x")
    out = nap.write_points(str(tmp_path / "saved.csv"), data, {"properties": meta["properties"], "name": "x"})
    assert out == [str(tmp_path / "saved.csv")]
    (data2, meta2, kind2), *_ = nap.get_points_reader(out[0])(out[0])
    assert kind2 == "points"
    np.testing.assert_allclose(data2, data, atol=1e-4)
    for c in ("prob", "pair_id", "sister", "track_id"):
        np.testing.assert_allclose(np.asarray(meta2["properties"][c], float), np.asarray(meta["properties"][c], float))
    # 3D layer with properties given as napari "features" (a DataFrame)
    out = nap.write_points(tmp_path / "zyx.csv", data[:, 1:], {"features": pd.DataFrame({"prob": np.arange(12.0)})})
    back = pd.read_csv(out[0])
    assert list(back.columns[:4]) == ["z", "y", "x", "prob"] and "t" not in back.columns
    with pytest.raises(InputError, match="2 dimensions"):
        nap.write_points(tmp_path / "bad.csv", np.zeros((3, 2)), {})
    assert not (tmp_path / "bad.csv").exists()


def test_labels_reader(tmp_path):
    from kt_stardist import io

    lab = np.zeros((2, 4, 16, 16, 1), np.uint16)
    lab[0, 1:3, 2:5, 2:5, 0] = 1
    lab[1, 1:3, 8:11, 8:11, 0] = 7
    io.write_image(tmp_path / "cell_labels.tif", np.moveaxis(lab, 4, 2), axes="TZCYX", voxel_size_um=(0.3, 0.13, 0.13))
    assert nap.get_labels_reader(str(tmp_path / "cell.tif")) is None
    reader = nap.get_labels_reader(str(tmp_path / "cell_labels.tif"))
    [(data, meta, kind)] = reader(str(tmp_path / "cell_labels.tif"))
    assert kind == "labels" and data.shape == (2, 4, 16, 16)
    assert set(np.unique(data[1]).tolist()) == {0, 7} and (data[0] == 1).sum() == 2 * 3 * 3
    assert meta["metadata"]["voxel_size_um"] == pytest.approx([0.3, 0.13, 0.13])


def test_layer_voxel_size_and_image():
    """The widgets' voxel size: the fields when both are set, else the layer's scale unless it is
    napari's default (all 1, px), else the default; a layer becomes a (T, Z, Y, X, 1) Image."""
    assert nap.layer_voxel_size_um(np.array([0.25, 0.1, 0.1])) == (0.25, 0.1, 0.1)
    assert nap.layer_voxel_size_um(np.array([2.0, 0.25, 0.1, 0.1])) == (0.25, 0.1, 0.1)  # t, z, y, x scale
    assert nap.layer_voxel_size_um(np.ones(3)) == (0.3, 0.13, 0.13)
    assert nap.layer_voxel_size_um(np.ones(3), z_um=0.4, yx_um=0.2) == (0.4, 0.2, 0.2)
    assert nap.layer_voxel_size_um(np.array([0.25, 0.1, 0.1]), z_um=0.4) == (0.25, 0.1, 0.1)  # one field alone: ignored
    with pytest.raises(InputError, match="layer scale"):
        nap.layer_voxel_size_um(np.array([0.0, 0.1, 0.1]))
    img = nap.layer_image(np.zeros((6, 8, 9), np.uint16), (0.25, 0.1, 0.1), "cell")
    assert img.data.shape == (1, 6, 8, 9, 1) and img.voxel_size_um == (0.25, 0.1, 0.1)
    assert nap.layer_image(np.zeros((2, 6, 8, 9)), (0.3, 0.13, 0.13)).data.shape == (2, 6, 8, 9, 1)
    with pytest.raises(InputError, match=r"layer '2d': expected \(Z, Y, X\)"):
        nap.layer_image(np.zeros((8, 9)), (0.3, 0.13, 0.13), "2d")


def test_points_in_image_px():
    """Clicks stored in world units (µm scale, translated image) come back in the image's px."""
    px = np.array([[2.0, 10.0, 20.0], [5.5, 30.25, 1.0]])
    scale, shift = np.array([0.3, 0.13, 0.13]), np.array([0.0, 1.3, -2.6])
    world = px * scale + shift
    df = nap.points_in_image_px(world, np.ones(3), np.zeros(3), scale, shift, (8, 40, 40))
    assert list(df.columns) == ["z", "y", "x"]
    np.testing.assert_allclose(df.to_numpy(), px)
    # same scale on both layers (napari's default for a points layer added over the image)
    df = nap.points_in_image_px(px, scale, shift, scale, shift, (8, 40, 40))
    np.testing.assert_allclose(df.to_numpy(), px)
    movie = nap.points_in_image_px(np.c_[[1.0, 0.0], px], np.ones(4), np.zeros(4), np.ones(4), np.zeros(4),
                                   (2, 8, 40, 40))
    assert list(movie.columns) == ["t", "z", "y", "x"] and movie["t"].tolist() == [1, 0]
    with pytest.raises(InputError, match="no points"):
        nap.points_in_image_px(np.zeros((0, 3)), np.ones(3), np.zeros(3), np.ones(3), np.zeros(3), (8, 40, 40))
    with pytest.raises(InputError, match="points have 3 axes, the image 4"):
        nap.points_in_image_px(px, np.ones(3), np.zeros(3), np.ones(4), np.zeros(4), (2, 8, 40, 40))
    with pytest.raises(InputError, match="1 of 2 points lie outside the image"):
        nap.points_in_image_px(px, np.ones(3), np.zeros(3), np.ones(3), np.zeros(3), (8, 40, 15))


def test_in_process_passes_steps_and_errors(tmp_path):
    """A job in the child process: its steps arrive, its InputError is raised here with its line."""
    img = nap.layer_image(np.zeros((4, 8, 8), np.float32), (0.3, 0.13, 0.13))
    steps = []
    with pytest.raises(InputError, match="model folder not found"):
        for step in nap.in_process(nap.predict_job, str(tmp_path / "nope"), img):
            steps.append(step)
    assert steps == [(0, 1, "loading the model")]


def test_finetune_refuses_a_folder_holding_a_model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    img = nap.layer_image(np.zeros((4, 8, 8), np.float32), (0.3, 0.13, 0.13))
    with pytest.raises(InputError, match="already holds a model"):
        next(nap.finetune_steps(tmp_path / "m", img, pd.DataFrame({"z": [1.0], "y": [2.0], "x": [3.0]})))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json"]


def test_plugin_module_imports_no_napari_or_tensorflow():
    code = ("import sys, kt_stardist.napari_plugin;"
            "bad = [m for m in ('napari', 'magicgui', 'tensorflow', 'stardist', 'qtpy') if m in sys.modules];"
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------------------------
# manifest: the rules npe2 enforces (npe2 itself is not installed), checked structurally
# --------------------------------------------------------------------------------------------

# from npe2.manifest._validators
_PKG = "([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])"
COMMAND_ID = re.compile(rf"^(({_PKG}\.)*[a-zA-Z_][a-zA-Z_0-9]*)$", re.I)
DISPLAY_NAME = re.compile(r"^[^\W_][\w -~:.'\"]{1,88}[^\W_]$")
ALLOWED = {
    "manifest": {"name", "display_name", "visibility", "icon", "categories", "schema_version",
                 "on_activate", "on_deactivate", "contributions"},
    "commands": {"id", "title", "python_name", "short_title", "category", "icon", "enablement"},
    "readers": {"command", "filename_patterns", "accepts_directories"},
    "writers": {"command", "layer_types", "filename_extensions", "display_name"},
    "widgets": {"command", "display_name", "autogenerate"},
}
LAYER_TYPES = {"image", "labels", "points", "shapes", "surface", "tracks", "vectors"}


def test_npe2_manifest_structure():
    mf = yaml.safe_load(MANIFEST.read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(mf) <= ALLOWED["manifest"]
    assert mf["name"] == project["name"]  # npe2: must match the distribution name
    assert DISPLAY_NAME.match(mf["display_name"])
    contrib = mf["contributions"]
    commands = {c["id"]: c for c in contrib["commands"]}
    for cid, c in commands.items():
        assert set(c) <= ALLOWED["commands"] and {"id", "title"} <= set(c)
        assert COMMAND_ID.match(cid) and cid.startswith(mf["name"] + "."), cid
        module, _, attr = c["python_name"].partition(":")
        if module == "kt_stardist.napari_widgets":
            pytest.importorskip("napari")
        assert callable(getattr(importlib.import_module(module), attr)), c["python_name"]
    for kind in ("readers", "writers", "widgets"):
        for entry in contrib[kind]:
            assert set(entry) <= ALLOWED[kind], entry
            assert entry["command"] in commands, entry
    for r in contrib["readers"]:
        assert r["filename_patterns"] and all(isinstance(p, str) for p in r["filename_patterns"])
    for w in contrib["writers"]:
        assert w["layer_types"] and all(re.sub(r"[?+*]$|\{.*\}$", "", t) in LAYER_TYPES for t in w["layer_types"])
        assert all(e.startswith(".") and len(e) >= 2 for e in w["filename_extensions"])
    for w in contrib["widgets"]:
        assert w["display_name"]
    # every reader/writer/widget entry point named in the manifest is a real function here
    used = {e["command"] for k in ("readers", "writers", "widgets") for e in contrib[k]}
    assert used == set(commands)


def test_manifest_entry_point_when_registered():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    eps = meta["project"].get("entry-points", {}).get("napari.manifest")
    if eps is None:
        pytest.skip("pyproject.toml has no [project.entry-points.\"napari.manifest\"] yet")
    assert eps == {"kt-stardist": "kt_stardist:napari.yaml"}
    assert "napari.yaml" in meta["tool"]["setuptools"]["package-data"]["kt_stardist"]


def test_arivis_export_opens_with_plain_id_properties(shared_data):
    path = str(shared_data / "arivis_format_example.csv")
    layers = nap.get_points_reader(path)(path)
    assert [kind for _, _, kind in layers] == ["points", "tracks"]
    props = layers[0][1]["properties"]
    assert all(v.dtype == np.int64 for k, v in props.items() if k != "prob")  # no pandas <NA> objects
    assert layers[0][0].shape[1] == 4 and layers[0][0][:, 0].max() == 2  # 3 frames (t = 0, 1, 2)


def test_manifest_validates_with_npe2():
    npe2 = pytest.importorskip("npe2", reason="npe2 not installed (add it to the test extra)")
    mf = npe2.PluginManifest.from_file(MANIFEST)
    assert mf.name == "kt-stardist"
    assert {r.command for r in mf.contributions.readers} == {"kt-stardist.read_points", "kt-stardist.read_labels"}
