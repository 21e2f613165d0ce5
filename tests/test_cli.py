import subprocess
import sys

import pytest

from kt_stardist.cli import build_parser, main


def test_help_is_fast_and_imports_no_tensorflow():
    code = (
        "import sys, time; t=time.time();\n"
        "from kt_stardist.cli import build_parser; build_parser().format_help();\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported by --help';\n"
        "assert 'stardist' not in sys.modules, 'stardist imported by --help';\n"
        "print(time.time()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 1.0


def test_every_subcommand_has_help(capsys):
    import pytest

    from kt_stardist.cli import ORDER

    parser = build_parser()
    sub = [a for a in parser._actions if a.dest == "command"][0]
    assert set(ORDER) <= set(sub.choices)  # every documented command is there
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: kt-stardist {name}") and "--help" in out


def test_impossible_sizes_refused_up_front_with_the_memory_they_need(tmp_path, capsys):
    """Absurd shapes stop with one line naming the memory they would need (no allocation, no
    traceback, nothing written)."""
    pts = tmp_path / "p.csv"
    pts.write_text("z,y,x\n1,2,3\n")
    cases = [["labels", str(pts), "--shape", "100000", "100000", "100000", "--voxel-size", "0.3", "0.13", "0.13",
              "--out", str(tmp_path / "l.tif")],
             ["simulate", str(tmp_path / "sim"), "--shape", "20000", "20000", "200"]]
    for argv in cases:
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and "would need" in err[0] and "TB of memory" in err[0], err
    assert not (tmp_path / "l.tif").exists() and not any((tmp_path / "sim").glob("*.tif"))


@pytest.mark.slow
def test_loading_a_model_prints_no_tensorflow_log_lines():
    """TensorFlow's C++ start-up lines (oneDNN, CPU features) stay hidden unless --verbose."""
    import os

    import pytest

    code = "from kt_stardist.model import load_model; load_model(); print('ok')"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KT_STARDIST_VERBOSE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert out.stderr.strip() == "", out.stderr
    if "oneDNN" not in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      env={**env, "KT_STARDIST_VERBOSE": "1"}).stderr:
        pytest.skip("this TensorFlow build prints nothing at start-up: the quiet path is not exercised")


def test_quiet_prints_no_progress(tmp_path):
    """--quiet: no progress bar or progress line on stderr; the result line stays."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("KT_STARDIST_QUIET", "TQDM_DISABLE")}

    def run(*extra, out):
        cmd = [sys.executable, "-m", "kt_stardist", *extra, "simulate", str(tmp_path / out), "--n", "1",
               "--shape", "8", "32", "32", "--seed", "1"]
        return subprocess.run(cmd, capture_output=True, text=True, env=env)

    loud, quiet = run(out="a"), run("--quiet", out="b")
    assert loud.returncode == quiet.returncode == 0
    assert "simulate (volumes)" in loud.stderr  # the progress bar
    assert quiet.stderr == "" and "wrote 1 volume" in quiet.stdout


def test_pairs_track_and_labels_write_a_run_record(tmp_path):
    """Every output file of pairs, track and labels gets <name>.run.json: version, command,
    arguments, seconds."""
    import json

    pts = tmp_path / "p.csv"
    pts.write_text("t,z,y,x\n0,5,10,10\n0,5,10,17\n1,5,10.5,10\n1,5,10.5,17\n")
    for argv, out in ((["pairs", str(pts), "--voxel-size", "0.3", "0.13", "0.13"], "paired.csv"),
                      (["track", str(pts), "--voxel-size", "0.3", "0.13", "0.13"], "tracked.csv"),
                      (["labels", str(pts), "--shape", "10", "32", "32", "--voxel-size", "0.3", "0.13", "0.13"],
                       "labels.tif")):
        assert main(argv + ["--out", str(tmp_path / out)]) == 0
        rec = json.loads((tmp_path / (out.rsplit(".", 1)[0] + ".run.json")).read_text())
        assert rec["arguments"]["command"] == argv[0] and rec["output"] == str(tmp_path / out)
        assert rec["kt_stardist_version"] and rec["seconds"] >= 0
    assert not (tmp_path / "q.run.json").exists()
    assert main(["pairs", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "q.csv")]) == 2
    assert not (tmp_path / "q.run.json").exists()  # no record of a failed run
