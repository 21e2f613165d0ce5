import subprocess
import sys
import time

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
    parser = build_parser()
    sub = [a for a in parser._actions if a.dest == "command"][0]
    assert len(sub.choices) >= 1
    for name in sub.choices:
        try:
            main([name, "--help"])
        except SystemExit as e:
            assert e.code == 0
        assert name in capsys.readouterr().out
