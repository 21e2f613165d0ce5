"""The ``kt-stardist`` command: argument parsing, progress and messages; it only calls the library.

Each subcommand lives in its own module ``kt_stardist/cli/<name>.py`` defining

- ``HELP``: one line for ``kt-stardist --help``,
- ``add_arguments(parser)``: its argparse arguments,
- ``run(args) -> int | None``: the work (imports heavy libraries lazily, inside ``run``).

Modules are discovered, so adding a subcommand touches no other file. Importing a subcommand
module must stay cheap (no TensorFlow, no numpy at module level) so ``kt-stardist --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

#: order in ``--help``; discovered modules not listed here come after, alphabetically
ORDER = [
    "demo", "predict", "simulate", "labels", "evaluate", "polyfit", "pretrain", "finetune",
    "pairs", "track", "report", "export",
]


def _subcommand_modules():
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [(n, importlib.import_module(f"{__name__}.{n}")) for n in names]


def build_parser() -> argparse.ArgumentParser:
    from kt_stardist import __version__

    parser = argparse.ArgumentParser(
        prog="kt-stardist",
        description="Find kinetochores in 3D/4D fluorescence microscopy with StarDist. "
        "Axis order z, y, x; default voxel size 0.3 x 0.13 x 0.13 µm.",
    )
    parser.add_argument("--version", action="version", version=f"kt-stardist {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's log lines too")
    parser.add_argument("--quiet", action="store_true",
                        help="for scripts: no progress bars or progress lines; warnings, errors and results only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _subcommand_modules():
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _quiet_tensorflow(verbose: bool) -> None:
    """TensorFlow's C++ log lines (oneDNN, CPU features, ...) off unless ``--verbose``; must run
    before TensorFlow is imported."""
    import os

    if verbose:
        os.environ["KT_STARDIST_VERBOSE"] = "1"  # kt_stardist.model.stardist_backend.VERBOSE_ENV
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def info(msg: str) -> None:
    """A progress line on stderr, unless ``--quiet``."""
    import os

    if not os.environ.get("KT_STARDIST_QUIET"):
        print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """Run ``kt-stardist``. Exit codes: 0 done; 1 done, but some inputs or frames failed (each
    said in one line); 2 bad input or arguments (one line); 130 interrupted."""
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_tensorflow(getattr(args, "verbose", False))
    if getattr(args, "quiet", False):
        os.environ["KT_STARDIST_QUIET"] = "1"
        os.environ["TQDM_DISABLE"] = "1"  # tqdm reads its defaults from TQDM_* variables
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    from kt_stardist.errors import KtError

    import time

    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    try:
        rc = args._run(args)
    except KtError as e:
        print(f"kt-stardist {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kt-stardist {args.command}: interrupted", file=sys.stderr)
        return 130
    out = getattr(args, RUN_JSON_COMMANDS.get(args.command, ""), None)
    if not rc and out:
        _write_run_json(args, out, started, time.perf_counter() - t0)
    return int(rc or 0)


#: command → the argument naming its output, which gets a ``<name>.run.json`` record beside it
#: from here (``predict`` and the demo write a fuller one through
#: :mod:`kt_stardist.pipeline`; training writes the model folder's)
RUN_JSON_COMMANDS = dict(pairs="out", track="out", labels="out", simulate="out", export="out", report="out",
                         evaluate="json", polyfit="csv")


def _write_run_json(args, out, started, seconds):
    """``<out>.run.json``: version, command line, every argument, start time and seconds."""
    from kt_stardist import __version__
    from kt_stardist.model.info import write_json
    from kt_stardist.pipeline import run_json_path

    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    write_json(run_json_path(out), dict(kt_stardist_version=__version__,
                                        command=" ".join(["kt-stardist"] + sys.argv[1:]),
                                        arguments=arguments, started=started, seconds=round(seconds, 3),
                                        output=str(out)))
