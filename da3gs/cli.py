"""Command line: ``da3gs COMMAND ...`` (``da3gs --help`` lists the commands).

User errors (bad files, arguments, checkpoints) print one line and exit with status 2;
an interrupt (Ctrl-C: 130, SIGTERM: 143) leaves no half-written output behind.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from da3gs._version import __version__
from da3gs.apps.common import DEFAULT_MODEL, MODEL_HELP  # noqa: F401  (re-exported)
from da3gs.errors import Da3gsError


# command -> (module, parser-adding function, run function); modules are imported on use, in
# this order of the help text
_COMMANDS = {
    "render": ("da3gs.apps.render", "add_render_parser", "run_render"),
    "eval": ("da3gs.apps.eval", "add_eval_parser", "run_eval"),
    "pseudo-label": ("da3gs.apps.pseudo_label", "add_pseudo_label_parser", "run_pseudo_label"),
    "export": ("da3gs.apps.export", "add_export_parser", "run_export"),
    "train": ("da3gs.apps.train", "add_train_parser", "run_train"),
    "fetch": ("da3gs.apps.fetch", "add_fetch_parser", "run_fetch"),
    "view": ("da3gs.apps.view", "add_view_parser", "run_view"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="da3gs", description="Feed-forward 3D Gaussian splatting with Depth Anything 3.")
    parser.add_argument("--version", action="version", version=f"da3gs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, adder, _ in _COMMANDS.values():
        getattr(importlib.import_module(module), adder)(sub)
    return parser


def _terminate_cleanly(fn):
    """SIGTERM/SIGHUP clean up as Ctrl-C does: temporaries removed, exit 128 + signal number."""
    import functools

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        from da3gs.apps.outputs import Terminated, terminate_as_exception

        try:
            with terminate_as_exception():
                return fn(argv)
        except Terminated as t:
            print("da3gs: terminated; no output written", file=sys.stderr)
            return 128 + t.signum

    return wrapper




def _console_log(command: str):
    """Library log records (logger ``da3gs``, WARNING and up) as ``da3gs COMMAND: note: ...``
    lines on stderr for the duration of one command; returns the handler to remove."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"da3gs {command}: note: %(message)s"))
    logger = logging.getLogger("da3gs")
    logger.addHandler(handler)
    return handler


@_terminate_cleanly
def main(argv: list[str] | None = None) -> int:
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    handler = _console_log(args.command)
    try:
        module, _, func = _COMMANDS[args.command]
        job = getattr(importlib.import_module(module), func)
        if hasattr(args, "gpus"):  # render, eval: one process, or context-parallel over several
            from da3gs.apps.common import run_job

            run_job(args, job)
        else:
            job(args)
        return 0
    except Da3gsError as e:
        print(f"da3gs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"da3gs {args.command}: interrupted; no output written", file=sys.stderr)
        return 130
    except OSError as e:  # the environment (disk full, read-only ...): one line, not a traceback
        from da3gs.apps.outputs import environment_error

        err = environment_error(e, str(e.filename or "output"))
        if err is None:
            raise
        print(f"da3gs {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        logging.getLogger("da3gs").removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
