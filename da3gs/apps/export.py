"""``da3gs export``: a model in the official Depth Anything 3 layout, or a splat file converted.

``da3gs export IN --to spz|splat|ply|sog [--out FILE]`` converts Gaussian splat files between PLY
(INRIA), SPZ, ``.splat`` and SOG (:mod:`da3gs.io.splat_files`; SOG: FILE ``x.sog`` is one bundle,
``DIR/meta.json`` the unbundled layout, its images beside it). FILE (default: IN with the new suffix)
must not exist: a file is never replaced, whatever wrote it; it is written atomically.

``da3gs export --official DIR --from SOURCE``:

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
        "export", help="write a model in the official Depth Anything 3 layout, or convert a "
        "splat file (ply/spz/splat/sog)",
        description="--official DIR --from SOURCE: write a model as config.json + "
        "model.safetensors in the layout of the official Depth Anything 3 release (tied tensors "
        "stored once), so that the official package loads it. DIR must be new; with --overwrite, "
        "a folder da3gs wrote is replaced (never a folder holding anything else). "
        "IN --to FORMAT [--out FILE]: convert a Gaussian splat file (.ply, .spz, .splat, .sog or a "
        "SOG folder's meta.json) to FORMAT; FILE must not exist (files are never replaced). "
        "SOG: --out x.sog writes one bundle, --out DIR/meta.json the unbundled layout in DIR.")
    p.add_argument("input", nargs="?", metavar="IN", help="splat file to convert (with --to)")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--official", metavar="DIR", help="output folder, official layout")
    fmt.add_argument("--to", choices=["spz", "splat", "ply", "sog"],
                     help="convert IN to this splat format")
    p.add_argument("--spz-version", type=int, choices=[2, 3, 4], default=3,
                   help="with --to spz: SPZ format version (default 3, which Spark 2.2 and the "
                   "bundled viewer read; 4 is smaller (zstd, pip install 'da3gs[spz4]') but needs a "
                   "newer reader; 2 for old readers)")
    p.add_argument("--out", metavar="FILE", help="with --to: output file (default: IN with the "
                   "format's suffix)")
    p.add_argument("--from", dest="source", metavar="SOURCE",
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
    if getattr(args, "to", None) is not None:
        return run_convert(args)
    import torch

    from da3gs.apps.outputs import check_output_dir, write_output_dir
    from da3gs.models.export import DTYPES, ExportError, official_name, write_official_files
    from da3gs.models.loading import load_model

    if not args.source:
        raise ExportError("--official needs --from SOURCE (the model to export)")
    if args.input:
        raise ExportError(f"{args.input}: a file to convert needs --to FORMAT, not --official")
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


def _splat_bytes(path) -> int:
    """Bytes of a splat file; of all files of an unbundled SOG (``meta.json`` and its images)."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.name.lower() != "meta.json":
        return path.stat().st_size
    meta = json.loads(path.read_bytes())
    names = {f for v in meta.values() if isinstance(v, dict) for f in v.get("files", [])}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in names
                                     if (path.parent / f).is_file())


def run_convert(args: argparse.Namespace) -> None:
    """``da3gs export IN --to FORMAT [--out FILE]``: convert a splat file; prints one line."""
    from pathlib import Path

    from da3gs.apps.outputs import check_writable, environment_error
    from da3gs.errors import Da3gsError
    from da3gs.io.splat_files import read_gaussians, splat_format_of, write_gaussians

    if not args.input:
        raise Da3gsError("--to: name the splat file to convert (da3gs export IN.ply --to spz)")
    src = Path(args.input)
    if splat_format_of(src) is None:
        raise Da3gsError(f"{src}: not a splat file name (expected .ply, .spz, .splat, .sog or meta.json)")
    base = src.parent if src.name.lower() == "meta.json" else src  # an unbundled SOG: its folder
    out = Path(args.out) if args.out else base.with_suffix("." + args.to)
    if splat_format_of(out) not in (None, args.to):
        raise Da3gsError(f"--out {out}: the suffix says {splat_format_of(out)}, but --to is {args.to}")
    if out.exists() or out.is_symlink():
        raise Da3gsError(f"--out {out}: exists; da3gs export never replaces a file (remove it or "
                         "choose another name)")
    if not out.parent.is_dir():
        raise Da3gsError(f"--out {out}: folder {out.parent} does not exist")
    if args.to == "spz" and getattr(args, "spz_version", 3) == 4:
        from da3gs.io.spz import check_zstd

        check_zstd("--spz-version 4")
    check_writable(out, "--out")  # read-only, over-long name: refused before reading IN
    g = read_gaussians(src)
    try:
        write_gaussians(out, g, args.to, spz_version=getattr(args, "spz_version", None))
    except OSError as e:  # disk full, quota, ... while writing (the file is written atomically)
        raise (environment_error(e, f"--out {out}") or e) from None
    size, before = _splat_bytes(out), _splat_bytes(src)
    print(f"wrote {out} ({len(g)} Gaussians, {size / 1e6:.2f} MB, {before / max(size, 1):.1f}x "
          f"smaller than {src.name})" if size < before else
          f"wrote {out} ({len(g)} Gaussians, {size / 1e6:.2f} MB)")
