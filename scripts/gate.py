"""The ship gate: a candidate against the shipped model on the fixed, versioned check set.

Usage:
    python scripts/gate.py CANDIDATE [--shipped DIR] [--data-root DIR] [--device auto]
        [--precision auto] [--out gate.json] [--export DIR [--export-only]]
        [--lpips-weights FILE] [--reduced KEY=VALUE ...] [--all-rows]

CANDIDATE: a run folder (its newest checkpoint), a checkpoint folder (its model.safetensors:
the EMA weights when the run kept an EMA), a model folder or file, or ``mini`` / ``random:...``.
Both models are evaluated in this process on the same check set (da3gs/train/gate.py: 32
procedural scenes from fixed seeds, LLFF fern, Blender lego, ICL-NUIM under the protocol of
docs/training.md#results); the candidate rounded to fp16, as it would ship. Prints the table
(row, shipped, candidate, delta, tolerance, target, pass / FAIL / missing) and the decision,
writes the report as JSON (``--out``), and with ``--export DIR`` writes the candidate as an
fp16 model folder (15.7 MB for the compact preset: small enough to come back from the GPU
machine) whose sha256 the report records, for ``scripts/ship_model.py --report``;
``--export-only`` stops after the export (the gate then runs elsewhere, e.g. on the CPU through
``scripts/ship_model.py`` without ``--report``).

``--data-root``: the folder holding llff_fern, lego_400 and icl_nuim_livingroom_rgbd5
(default: the first of ../shared/data, shared/data, runs/eval_data beside the repository that
has them). ``--reduced scenes=8 real_res=140 ...`` changes check-set fields (a smoke run on a
slow machine): the report is then marked ``full_protocol: false`` and never ships.

Exit status: 0 when the decision is ship, 1 when not, 2 for a bad flag, path or model (one
line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"gate: error: {message}\n")
        sys.exit(2)


def parse_reduced(items: list[str]):
    """``["scenes=8", ...]`` -> a CheckSet with those fields changed (one-line errors)."""
    from da3gs.train.gate import GATE_CHECK_SET, GateError

    fields = {f.name: f for f in dataclasses.fields(GATE_CHECK_SET)}
    kw = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or key not in fields or key == "procedural":
            raise GateError(f"--reduced {it!r}: expected KEY=VALUE with KEY one of "
                            + ", ".join(k for k in fields if k != "procedural"))
        typ = type(getattr(GATE_CHECK_SET, key))
        try:
            kw[key] = typ(val)
        except ValueError:
            raise GateError(f"--reduced {it!r}: {key} takes a {typ.__name__}") from None
    try:
        return dataclasses.replace(GATE_CHECK_SET, **kw)
    except (ValueError, TypeError) as e:
        raise GateError(f"--reduced: {e}") from None


def main(argv=None) -> int:
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidate")
    ap.add_argument("--shipped", default=None, help="the shipped model (default: the bundled "
                    "da3gs/weights/mini)")
    ap.add_argument("--data-root", default=None, help="folder with the real check scenes")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--out", default=None, help="write the report (JSON) here")
    ap.add_argument("--export", default=None,
                    help="also write the candidate as an fp16 model folder here (must not exist)")
    ap.add_argument("--export-only", action="store_true",
                    help="with --export: write the fp16 folder and stop (gate it elsewhere)")
    ap.add_argument("--lpips-weights", default=None,
                    help="LPIPS-VGG weights for the info rows (else $DA3GS_LPIPS_DIR, the cache)")
    ap.add_argument("--reduced", nargs="*", default=[], metavar="KEY=VALUE",
                    help="change check-set fields (never ships)")
    ap.add_argument("--all-rows", action="store_true", help="also print the info metrics")
    args = ap.parse_args(argv)

    from da3gs.errors import Da3gsError
    from da3gs.io.atomic import atomic_path
    from da3gs.train.gate import format_table, run_gate

    try:
        check = parse_reduced(args.reduced)
        if args.out:
            out = Path(args.out)
            if out.is_dir():
                raise Da3gsError(f"--out {out}: is a folder (give a file name)")
        if args.export and (Path(args.export).exists() or Path(args.export).is_symlink()):
            raise Da3gsError(f"--export {args.export}: already exists; not overwriting")
        source = args.candidate
        exported = None
        if args.export:  # measure exactly the exported file
            from da3gs.train.ship import export_fp16

            exported = export_fp16(source, args.export)
            source = args.export
            if args.export_only:
                print(json.dumps(exported, indent=2))
                return 0
        elif args.export_only:
            raise Da3gsError("--export-only needs --export DIR")
        report = run_gate(source, shipped=args.shipped, data_root=args.data_root,
                          device=args.device, precision=args.precision, check=check,
                          lpips_weights=args.lpips_weights,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    except Da3gsError as e:
        sys.stderr.write(f"gate: error: {' '.join(str(e).split())}\n")
        return 2
    if exported is not None:
        report["models"]["candidate"].update(exported=args.export,
                                             source=args.candidate,
                                             checkpoint=exported.get("source"))
    print(f"gate v{report['gate_version']} on {report['device']} ({report['precision']}), "
          f"check set {'v' + str(report['gate_version']) if report['full_protocol'] else 'REDUCED'}"
          f", data root {report['check_set']['data_root']}; {report['seconds']['total']:.0f} s")
    if report["check_set"]["missing_scenes"]:
        print("missing real scenes: " + ", ".join(report["check_set"]["missing_scenes"]))
    print(f"shipped:   {report['models']['shipped']['source']} "
          f"(sha256 {report['models']['shipped']['sha256']})")
    print(f"candidate: {report['models']['candidate']['source']} "
          f"(sha256 {report['models']['candidate']['sha256']})")
    print(format_table(report["rows"], report["decision"]))
    if args.all_rows:
        for k, v in report["info"].items():
            f = lambda x: "-" if x is None else f"{x:.3f}"
            print(f"  info {k}: {f(v['shipped'])} -> {f(v['candidate'])}")
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.out}")
    return 0 if report["decision"]["ship"] else 1


if __name__ == "__main__":
    sys.exit(main())
