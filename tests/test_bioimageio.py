"""kt-stardist export: a bioimage.io model package (format 0.5) that bioimageio.spec validates offline."""

import socket
import sys
import zipfile

import numpy as np
import pytest

from kt_stardist.errors import InputError, KtError

pytest.importorskip("bioimageio.spec")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test (validation must stay offline)."""
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_export_refuses_bad_output_and_names_the_missing_extra(tmp_path, monkeypatch, no_network):
    from kt_stardist.model.bioimageio import export_bioimageio, validate_package

    with pytest.raises(InputError, match="a bioimage.io package is a .zip file"):
        export_bioimageio(None, tmp_path / "model.tif")
    with pytest.raises(InputError, match="no such file"):  # not looked up online as a model id
        validate_package(tmp_path / "missing.zip")
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(KtError, match=r'pip install "kt-stardist\[bioimageio\]"'):
        export_bioimageio(None, tmp_path / "m.zip")


@pytest.mark.slow
def test_export_of_the_shipped_model_validates_offline_and_its_weights_reproduce_the_test_output(
        tmp_path, no_network, capsys):
    import yaml

    from kt_stardist.cli import main
    from kt_stardist.model.bioimageio import EPS, validate_package

    out = tmp_path / "kt-default.zip"
    assert main(["export", str(out)]) == 0
    assert "validated by bioimageio.spec" in capsys.readouterr().err
    summary = validate_package(out)
    assert summary.status in ("passed", "valid-format"), summary.format()
    assert not [e for e in summary.errors]

    with zipfile.ZipFile(out) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        z.extractall(tmp_path / "pkg")
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert set(rdf["weights"]) == {"keras_hdf5", "tensorflow_saved_model_bundle"}
    (raw,) = rdf["inputs"]
    assert [a.get("id", a["type"]) for a in raw["axes"]] == ["batch", "z", "y", "x", "channel"]
    assert [a["scale"] for a in raw["axes"][1:4]] == [300.0, 130.0, 130.0]  # nm: the model's voxel size
    prob_t = rdf["outputs"][0]
    assert [a["scale"] for a in prob_t["axes"][1:4]] == [300.0, 260.0, 260.0]  # grid (1, 2, 2)
    assert all(a["halo"] > 0 for a in prob_t["axes"][1:4])
    (sr,) = [p for p in raw["preprocessing"] if p["id"] == "scale_range"]  # (the spec adds ensure_dtype steps)
    assert (sr["kwargs"]["min_percentile"], sr["kwargs"]["max_percentile"]) == (1.0, 99.8)
    readme = (tmp_path / "pkg" / "README.md").read_text()
    assert "non-maximum suppression" in readme and "close-sister search" in readme

    # what bioimageio.core would do: scale_range, then the packaged Keras weights
    import keras

    x = np.load(tmp_path / "pkg" / "test_input.npy")
    lo = np.percentile(x, 1.0, axis=(1, 2, 3), keepdims=True)
    hi = np.percentile(x, 99.8, axis=(1, 2, 3), keepdims=True)
    net = keras.models.load_model(tmp_path / "pkg" / "weights.h5", compile=False)
    prob, dist = net.predict(((x - lo) / (hi - lo + EPS)).astype("f4"), verbose=0)
    want = np.load(tmp_path / "pkg" / "test_prob.npy")
    assert prob.shape == want.shape == (1, 16, 32, 32, 1)
    np.testing.assert_allclose(prob, want, atol=1e-5)
    np.testing.assert_allclose(dist, np.load(tmp_path / "pkg" / "test_dist.npy"), atol=1e-4)
    assert want.max() > 0.5  # the test input has kinetochores the network sees
