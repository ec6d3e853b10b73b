"""Command line: ``da3gs render | train | eval | export``.

User errors (bad files, arguments, checkpoints) print one line and exit with status 2;
an interrupt exits with 130 and leaves no half-written output behind.
"""

from __future__ import annotations

import argparse
import sys

from da3gs import __version__
from da3gs.errors import Da3gsError

DEFAULT_MODEL = "depth-anything/DA3-GIANT"
MODEL_HELP = (
    "model: a Hugging Face repo id, a local folder (config.json + model.safetensors) or "
    f"'random:PRESET' for random weights (default: {DEFAULT_MODEL}, the published model with a "
    "Gaussian head; licence CC BY-NC 4.0, non-commercial; fetched once into the Hugging Face "
    "cache)")


def _add_render(sub) -> None:
    p = sub.add_parser(
        "render", help="photos in; Gaussians, depth, cameras and a fly-through video out",
        description="Predict depth, cameras and 3D Gaussians from a folder of photos in one "
        "forward pass, then write gaussians.ply, video.mp4, depth/, cameras.json, "
        "transforms.json, colmap/ and summary.json into --out.")
    p.add_argument("--views", required=True, help="folder of input images (JPEG/PNG/...)")
    p.add_argument("--poses", help="known cameras: a transforms.json, a COLMAP model folder or "
                   "a poses_bounds.npy (default: none, the model predicts the cameras)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help=MODEL_HELP)
    src.add_argument("--checkpoint", help="a da3gs checkpoint (.safetensors file or folder)")
    p.add_argument("--out", default=None, help="output folder (default: <views>_da3gs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--process-res", type=int, default=504,
                   help="longest image side fed to the network, a multiple of 14 (default 504)")
    p.add_argument("--max-views", type=int, default=None,
                   help="use at most this many views, evenly spaced (default: all)")
    p.add_argument("--ref-view", default="saddle_balanced",
                   choices=["saddle_balanced", "first", "middle", "saddle_sim_range"],
                   help="reference-view strategy for pose-free input")
    p.add_argument("--trajectory", default="interpolate", choices=["interpolate", "orbit", "extend"],
                   help="camera path of the video (default: interpolate through the inputs)")
    p.add_argument("--frames", type=int, default=120, help="video frames (default 120)")
    p.add_argument("--fps", type=int, default=30, help="video frame rate (default 30)")
    p.add_argument("--no-video", action="store_true", help="skip the fly-through video")
    p.add_argument("--video-depth", action="store_true", help="video shows RGB | depth side by side")
    p.add_argument("--no-colmap", action="store_true", help="skip the COLMAP text model")
    p.add_argument("--prune-opacity", type=float, default=0.005,
                   help="drop Gaussians with opacity below this (default 0.005)")
    p.add_argument("--prune-conf", type=float, default=0.0,
                   help="drop Gaussians below this percentile of depth confidence (0-100)")
    p.add_argument("--prune-border", type=int, default=0,
                   help="drop Gaussians from pixels within this many pixels of the image border")
    p.add_argument("--voxel", type=float, default=0.0,
                   help="merge Gaussians of all views falling in one voxel of this size (world units)")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="test-time refinement steps of the pruned Gaussians on the input views "
                   "(default 0: none)")
    p.add_argument("--seed", type=int, default=0, help="random seed (random: models)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="da3gs", description="Feed-forward 3D Gaussian splatting with Depth Anything 3.")
    parser.add_argument("--version", action="version", version=f"da3gs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_render(sub)
    from da3gs.apps.eval import add_eval_parser

    add_eval_parser(sub)
    from da3gs.apps.pseudo_label import add_pseudo_label_parser

    add_pseudo_label_parser(sub)
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


@_terminate_cleanly
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        return 0
    except Da3gsError as e:
        print(f"da3gs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"da3gs {args.command}: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
