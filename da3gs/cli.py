"""Command line: ``da3gs COMMAND ...`` (``da3gs --help`` lists the commands).

User errors (bad files, arguments, checkpoints) print one line and exit with status 2;
an interrupt (Ctrl-C: 130, SIGTERM: 143) leaves no half-written output behind.
"""

from __future__ import annotations

import argparse
import sys

from da3gs import __version__
from da3gs.apps.common import DEFAULT_MODEL, MODEL_HELP  # noqa: F401  (re-exported)
from da3gs.errors import Da3gsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="da3gs", description="Feed-forward 3D Gaussian splatting with Depth Anything 3.")
    parser.add_argument("--version", action="version", version=f"da3gs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from da3gs.apps.render import add_render_parser

    add_render_parser(sub)
    from da3gs.apps.eval import add_eval_parser

    add_eval_parser(sub)
    from da3gs.apps.pseudo_label import add_pseudo_label_parser

    add_pseudo_label_parser(sub)
    from da3gs.apps.export import add_export_parser

    add_export_parser(sub)
    from da3gs.apps.train import add_train_parser

    add_train_parser(sub)
    from da3gs.apps.fetch import add_fetch_parser

    add_fetch_parser(sub)
    from da3gs.apps.view import add_view_parser

    add_view_parser(sub)
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
        if args.command == "render":
            from da3gs.apps.render import run_render

            run_render(args)
        elif args.command == "eval":
            from da3gs.apps.eval import run_eval

            run_eval(args)
        elif args.command == "pseudo-label":
            from da3gs.apps.pseudo_label import run_pseudo_label

            run_pseudo_label(args)
        elif args.command == "export":
            from da3gs.apps.export import run_export

            run_export(args)
        elif args.command == "train":
            from da3gs.apps.train import run_train

            run_train(args)
        elif args.command == "view":
            from da3gs.apps.view import run_view

            run_view(args)
        elif args.command == "fetch":
            from da3gs.apps.fetch import run_fetch

            run_fetch(args)
        return 0
    except Da3gsError as e:
        print(f"da3gs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"da3gs {args.command}: interrupted; no output written", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("da3gs").removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
