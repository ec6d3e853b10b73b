"""``da3gs export --official DIR --from SOURCE``: a model in the official Depth Anything 3 layout.

Writes ``DIR/config.json`` + ``DIR/model.safetensors`` as the official release does (tied tensors
once), so that weights trained with da3gs load in the official package
(``DepthAnything3.from_pretrained(DIR)``). ``--from`` takes any source ``load_model`` accepts:
a da3gs checkpoint file or folder, an official folder, a hub id or ``random:PRESET``.
"""

from __future__ import annotations

import argparse


def add_export_parser(sub) -> argparse.ArgumentParser:
    """Register the ``export`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "export", help="write a model in the official Depth Anything 3 layout",
        description="Write a model as config.json + model.safetensors in the layout of the "
        "official Depth Anything 3 release (tied tensors stored once), so that the official "
        "package loads it. DIR must be new; with --overwrite, a folder da3gs wrote is replaced "
        "(never a folder holding anything else).")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--official", metavar="DIR", help="output folder, official layout")
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                   help="model to export: a da3gs checkpoint (.safetensors file or folder), an "
                   "official folder, a hub repo id or random:PRESET")
    p.add_argument("--preset", default=None,
                   help="preset of the source weights when they do not name it (default: from "
                   "the checkpoint)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="precision of the written weights (default fp32)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR when it is a folder da3gs wrote (never anything else)")
    p.add_argument("--seed", type=int, default=0, help="random seed (random: sources)")
    return p


def run_export(args: argparse.Namespace) -> None:
    """Load ``args.source`` and write it to ``args.official``; prints one summary line.

    The output folder is checked before the model loads and written atomically, under the rules
    of every da3gs output folder (:mod:`da3gs.apps.outputs`)."""
    import torch

    from da3gs.apps.outputs import check_output_dir, write_output_dir
    from da3gs.models.export import DTYPES, ExportError, official_name, write_official_files
    from da3gs.models.loading import load_model

    if args.dtype not in DTYPES:
        raise ExportError(f"--dtype: expected one of {', '.join(DTYPES)}, got {args.dtype!r}")
    out = check_output_dir(args.official, {"--from": args.source}, args.overwrite,
                           flag="--official")
    torch.manual_seed(args.seed)
    model = load_model(args.source, device="cpu", preset=args.preset)
    official_name(model)  # a preset without an official network: refused before writing
    with write_output_dir(out, "export") as tmp:
        write_official_files(model, tmp, args.dtype)
    note = ""
    if getattr(model, "has_gs_head", False) and model.gs_geometry != "official":
        note = (" (note: the official package builds Gaussians with its own geometry; this GS "
                "head was trained with da3gs's)")
    print(f"wrote {args.official} ({model.preset.official_name}, {args.dtype}){note}")
