"""Ship a candidate into da3gs/weights/mini when the gate says so, and log the stretch.

Usage:
    python scripts/ship_model.py CANDIDATE [--report gate.json] [--weights-dir DIR]
        [--ledger docs/training.md] [--stretch N] [--gpu-minutes M] [--steps S] [--images I]
        [--metrics RUN_OR_JSONL ...] [--since-step S] [--note TEXT] [--data-root DIR]
        [--device auto] [--no-ledger]

1. CANDIDATE (run folder, checkpoint folder: its EMA model.safetensors, or model folder, e.g.
   the ``--export`` folder of scripts/gate.py brought back from the GPU machine) is written as
   fp16 safetensors + config.json into a temporary folder beside the weights folder;
2. checked: at most 16 MB, fp16 and finite, loads with ``da3gs.load_model``, finite depth,
   cameras and Gaussians on two random views;
3. gated: ``--report`` (scripts/gate.py's JSON of these same weights: its candidate sha256 must
   equal the export's and its shipped sha256 the weights folder's) or, without it, the gate runs
   here (minutes on a CPU);
4. the weights folder (default da3gs/weights/mini) is replaced by the temporary one (renames)
   only when the decision is ship; otherwise the temporary folder is deleted;
5. one row is appended to the "Ledger" section of docs/training.md (always; ``--no-ledger``
   skips it): date, stretch (default: the next number), GPU minutes, steps and images seen
   (flags, else from ``--metrics`` runs' metrics.jsonl past ``--since-step``), the candidate's
   headline rows, the headline score, shipped or not, and the note (plus the reasons when not).

Exit status 0 when shipped, 1 when not, 2 for a bad flag, path or model (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"ship_model: error: {message}\n")
        sys.exit(2)


def main(argv=None) -> int:
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidate")
    ap.add_argument("--report", default=None, help="scripts/gate.py's JSON for these weights")
    ap.add_argument("--weights-dir", default=str(ROOT / "da3gs" / "weights" / "mini"))
    ap.add_argument("--ledger", default=str(ROOT / "docs" / "training.md"))
    ap.add_argument("--no-ledger", action="store_true")
    ap.add_argument("--stretch", type=int, default=None)
    ap.add_argument("--gpu-minutes", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--metrics", nargs="*", default=[],
                    help="run folders or metrics.jsonl files of the stretch (stage 1, stage 2)")
    ap.add_argument("--since-step", type=int, default=0,
                    help="count only steps after this one in --metrics (a continued run)")
    ap.add_argument("--note", default="", help="text for config.json's 'trained' and the ledger")
    ap.add_argument("--data-root", default=None, help="without --report: the gate's data root")
    ap.add_argument("--device", default="auto", help="without --report: the gate's device")
    ap.add_argument("--allow-reduced", action="store_true", help=argparse.SUPPRESS)  # tests
    args = ap.parse_args(argv)

    from da3gs.errors import Da3gsError
    from da3gs.train.gate import format_table
    from da3gs.train.ship import run_stats, ship

    try:
        report = None
        if args.report:
            try:
                report = json.loads(Path(args.report).read_text())
            except (OSError, ValueError) as e:
                raise Da3gsError(f"--report {args.report}: cannot read ({e})") from None
            if not isinstance(report, dict) or "rows" not in report:
                raise Da3gsError(f"--report {args.report}: not a gate report")
        stats = run_stats(args.metrics, args.since_step) if args.metrics else {}
        for key, val in (("gpu_minutes", args.gpu_minutes), ("steps", args.steps),
                         ("images", args.images)):
            if val is not None:
                stats[key] = val
        res = ship(args.candidate, args.weights_dir, report=report,
                   gate_kwargs={"data_root": args.data_root, "device": args.device},
                   ledger=None if args.no_ledger else args.ledger, stretch=args.stretch,
                   stats=stats, note=args.note, allow_reduced=args.allow_reduced,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    except Da3gsError as e:
        sys.stderr.write(f"ship_model: error: {' '.join(str(e).split())}\n")
        return 2
    print(format_table(res["report"]["rows"], res["report"]["decision"]))
    print(("SHIPPED into " if res["shipped"] else "NOT shipped; ") +
          (args.weights_dir if res["shipped"] else "; ".join(res["reasons"])))
    if res["row"] is not None:
        print(f"ledger row ({args.ledger}): | " + " | ".join(res["row"]) + " |")
    return 0 if res["shipped"] else 1


if __name__ == "__main__":
    sys.exit(main())
