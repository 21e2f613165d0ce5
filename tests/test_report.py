"""Tests of kt_stardist.report and `kt-stardist report`: numbers, files, and a real headless browser."""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kt_stardist.errors import InputError
from kt_stardist.report import crop_box, write_report

VS = (0.3, 0.13, 0.13)
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _scene(n_t=2, shape=(12, 48, 56), seed=0):
    """Image (T, Z, Y, X, 1) with 3 sister pairs (gt, tracked) and detections: 1 miss, 1 FP per frame."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 3, (n_t, *shape, 1)).astype(np.float32)
    rows = []
    for k in range(3):
        for s in (1, 2):
            for t in range(n_t):
                z, y, x = 6.0, 14.0 + 10 * k + t, 15.0 + 12 * k + 7.0 * (s - 1)  # sisters 0.91 µm apart
                rows.append(dict(t=t, z=z, y=y, x=x, pair_id=k, sister=s, track_id=2 * k + s - 1))
    gt = pd.DataFrame(rows)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    for r in rows:
        d2 = ((zz - r["z"]) * VS[0]) ** 2 + ((yy - r["y"]) * VS[1]) ** 2 + ((xx - r["x"]) * VS[2]) ** 2
        img[r["t"], ..., 0] += 300 * np.exp(-d2 / (2 * 0.15**2))
    pred = gt.copy()
    pred["x"] += 1.0  # 0.13 µm off: every kept detection matches
    pred["prob"] = np.linspace(0.6, 0.99, len(pred))
    pred = pred[~((pred["pair_id"] == 2) & (pred["sister"] == 2))]  # one miss per frame (pair 2 broken)
    fps = pd.DataFrame([dict(t=t, z=3.0, y=40.0, x=45.0, prob=0.3, pair_id=-1, sister=0, track_id=-1)
                        for t in range(n_t)])
    return img, gt, pd.concat([pred, fps], ignore_index=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    img, gt, pred = _scene()
    out = tmp_path_factory.mktemp("rep") / "report"
    meta = dict(model="toy-model", thresholds={"prob": 0.5, "nms": 0.3}, command="kt-stardist predict a.tif")
    index = write_report(out, img, VS, pred, gt, meta=meta, title="Cell <1> & co")
    return index, json.loads((out / "summary.json").read_text())


def test_report_files_and_numbers(report):
    index, summary = report
    out = index.parent
    assert index.name == "index.html"
    assert sorted(p.name for p in out.iterdir()) == [
        "histograms.png", "index.html", "mip_t0.png", "summary.json", "tracks.png"]  # no temp files left
    ov = summary["overall"]
    # per frame: 6 gt, 5 matched detections + 1 false positive; 2 frames
    assert (ov["n_gt"], ov["detections"], ov["tp"], ov["fp"], ov["fn"]) == (12, 12, 10, 2, 2)
    assert ov["precision"] == pytest.approx(10 / 12) and ov["recall"] == pytest.approx(10 / 12)
    assert ov["rmse_nm"] == pytest.approx(130.0, abs=0.01)  # 1 px in x = 0.13 µm
    assert ov["pairs"] == 4  # pairs 0 and 1 complete in both frames; pair 2 lost a sister
    assert [r["t"] for r in summary["per_frame"]] == [0, 1]
    assert summary["inter_sister_distance_um"]["median"] == pytest.approx(7 * 0.13)
    assert summary["frame_shown"] == 0 and summary["meta"]["model"] == "toy-model"


def test_report_html_is_self_contained(report):
    index, _ = report
    page = index.read_text(encoding="utf-8")
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 3
    pngs = {p.name: p.read_bytes() for p in index.parent.glob("*.png")}
    assert sorted(base64.b64decode(u) for u in uris) == sorted(pngs.values())  # the same PNGs, embedded
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere
    assert "Cell &lt;1&gt; &amp; co" in page and "<1>" not in page  # escaped title
    assert "0.833" in page and "130.0" in page  # precision/recall/F1 and RMSE in the table
    assert "kt-stardist predict a.tif" in page and "toy-model" in page and ">nms<" in page
    assert "bounding box of the points + 2 µm margin" in page


def test_crop_box_margin_and_clipping():
    pts = np.array([[5.0, 100.0, 200.0], [7.0, 150.0, 210.0]])
    box = crop_box(pts, (61, 1000, 1000), VS, margin_um=1.3)
    # margin: 1.3 µm = 4.33 px in z, 10 px in y and x
    assert box == (slice(0, 13), slice(90, 161), slice(190, 221))
    assert crop_box(np.zeros((0, 3)), (4, 5, 6), VS) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_single_frame_without_gt_or_time(tmp_path):
    img, gt, pred = _scene(n_t=1)
    pred = pred.drop(columns=["t", "pair_id", "sister", "track_id"])
    index = write_report(tmp_path / "r", img[0, ..., 0], VS, pred)  # (Z, Y, X) volume
    names = sorted(p.name for p in index.parent.iterdir())
    assert names == ["histograms.png", "index.html", "mip_t0.png", "summary.json"]  # no tracks without track_id
    summary = json.loads((index.parent / "summary.json").read_text())
    assert summary["overall"] == {"t": "all", "detections": 6}
    assert "precision" not in index.read_text(encoding="utf-8").split("<h2>Run</h2>")[0].lower()


def test_uncertainty_of_the_points_is_shown_and_summarised(tmp_path):
    """Points with the refinement's uncertainty columns get a histogram figure and medians over
    the points whose fit passed (a failed fit's NaN sigma is left out, said in the caption);
    without the columns there is no such figure."""
    img, gt, pred = _scene(n_t=1)
    pred = pred.assign(fit_ok=True, sigma_z_nm=30.0, sigma_y_nm=8.0, sigma_x_nm=6.0)
    pred.loc[pred.index[0], ["fit_ok", "sigma_z_nm", "sigma_y_nm", "sigma_x_nm"]] = [False, np.nan, np.nan, np.nan]
    pred.loc[pred.index[1], ["sigma_z_nm", "sigma_y_nm", "sigma_x_nm"]] = [90.0, 40.0, 40.0]
    index = write_report(tmp_path / "r", img, VS, pred)
    assert (index.parent / "uncertainty.png").is_file()
    unc = json.loads((index.parent / "summary.json").read_text())["uncertainty_nm"]
    assert unc == {"n_points": 6, "n_fit_ok": 5, "median_z_nm": 30.0, "median_y_nm": 8.0, "median_x_nm": 6.0}
    assert "5 of 6 points whose fit passed" in index.read_text(encoding="utf-8")
    plain = write_report(tmp_path / "p", img, VS, pred.drop(columns=["sigma_z_nm", "sigma_y_nm", "sigma_x_nm"]))
    assert not (plain.parent / "uncertainty.png").exists()
    assert json.loads((plain.parent / "summary.json").read_text())["uncertainty_nm"] is None


def test_bad_inputs_raise_one_line_errors(tmp_path):
    img, gt, pred = _scene(n_t=2)
    with pytest.raises(InputError, match="outside the image's 2 frame"):
        write_report(tmp_path, img, VS, pred.assign(t=pred["t"] + 1))
    with pytest.raises(InputError, match="no 't' column"):
        write_report(tmp_path, img, VS, pred.drop(columns="t"))
    with pytest.raises(InputError, match="voxel_size_um"):
        write_report(tmp_path, img, (0.3, 0.13), pred)
    with pytest.raises(InputError, match="frame 5"):
        write_report(tmp_path, img, VS, pred, frame=5)
    assert not any(tmp_path.iterdir())  # nothing written


def test_failed_rewrite_keeps_the_old_page(tmp_path, monkeypatch):
    import kt_stardist.report as rep

    img, gt, pred = _scene(n_t=1)
    index = write_report(tmp_path / "r", img, VS, pred)
    before = index.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rep, "_html", boom)
    with pytest.raises(RuntimeError):
        write_report(tmp_path / "r", img, VS, pred.iloc[:3])
    assert index.read_bytes() == before  # index.html is written last, atomically
    assert not [p.name for p in index.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_cli_report(tmp_path, capsys):
    from kt_stardist import io
    from kt_stardist.cli import main

    img, gt, pred = _scene(n_t=2)
    io.write_image(tmp_path / "img.tif", np.moveaxis(img, 4, 2), axes="TZCYX", voxel_size_um=VS)
    io.write_points(pred, tmp_path / "pred.csv")
    io.write_points(gt, tmp_path / "gt.csv")
    rc = main(["report", str(tmp_path / "img.tif"), str(tmp_path / "pred.csv"), "--gt", str(tmp_path / "gt.csv"),
               "--frame", "1", "--title", "CLI test"])
    assert rc == 0
    index = tmp_path / "pred_report" / "index.html"
    assert capsys.readouterr().out.strip() == str(index)
    summary = json.loads((index.parent / "summary.json").read_text())
    assert summary["frame_shown"] == 1 and summary["overall"]["tp"] == 10
    assert summary["voxel_size_um"] == pytest.approx(list(VS))  # read from the ImageJ file
    assert "kt-stardist report" in summary["meta"]["command"] and "--gt" in summary["meta"]["command"]
    assert main(["report", str(tmp_path / "img.tif"), str(tmp_path / "nope.csv")]) == 2


# --------------------------------------------------------------------------------------------
# a real browser
# --------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--window-size=1200,1600",
]


def _chromium(page: Path, profile: Path, screenshot: Path | None = None):
    """(body tag of the loaded DOM, console lines of the page) from headless Chromium."""
    cmd = [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom"]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    out = subprocess.run(cmd + [page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    body = re.search(r"<body[^>]*>", out.stdout)
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    return (body.group(0) if body else ""), console


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not on PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    index, _ = report
    shot = tmp_path / "report_screenshot.png"
    body, console = _chromium(index, tmp_path / "profile", shot)
    assert 'data-images-loaded="3/3"' in body, body  # every <img> decoded (naturalWidth > 0)
    assert console == []  # no console messages or script errors
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a page with figures, not a blank one
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    print(f"screenshot: {ARTIFACTS / shot.name}")

    # the same checks catch a broken page: a corrupt image and a script error
    page = index.read_text(encoding="utf-8")
    broken = page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    broken = broken.replace("</body>", "<script>no_such_function()</script></body>")
    (tmp_path / "broken.html").write_text(broken, encoding="utf-8")
    body, console = _chromium(tmp_path / "broken.html", tmp_path / "profile2")
    assert 'data-images-loaded="2/3"' in body, body
    assert any("no_such_function" in line for line in console)
