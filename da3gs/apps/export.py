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
        "package loads it. DIR must be new or empty, or hold an earlier da3gs export "
        "(replaced with --overwrite); no other file in it is touched.")
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
                   help="replace an earlier da3gs export in DIR")
    p.add_argument("--seed", type=int, default=0, help="random seed (random: sources)")
    return p


def run_export(args: argparse.Namespace) -> None:
    """Load ``args.source`` and write it to ``args.official``; prints one summary line."""
    from pathlib import Path

    import torch

    from da3gs.models.export import check_export_target, save_official
    from da3gs.models.loading import load_model

    out = Path(args.official).expanduser()
    check_export_target(out, args.overwrite)  # before loading a big model
    torch.manual_seed(args.seed)
    model = load_model(args.source, device="cpu", preset=args.preset)
    save_official(model, out, overwrite=args.overwrite, dtype=args.dtype)
    note = ""
    if getattr(model, "has_gs_head", False) and model.gs_geometry != "official":
        note = (" (note: the official package builds Gaussians with its own geometry; this GS "
                "head was trained with da3gs's)")
    print(f"wrote {out} ({model.preset.official_name}, {args.dtype}){note}")
