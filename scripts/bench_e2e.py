"""End-to-end `da3gs render` time for V views at 504 px (random weights of a preset).

Views are the images of --images (cycled when V exceeds their number). Each configuration runs
--repeats times; the median of each stage from summary.json is reported as a markdown row.

Usage: python scripts/bench_e2e.py --images DIR --model random:giant --views 8 32 [--video]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--model", default="random:giant")
    ap.add_argument("--views", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--video", action="store_true", help="include a 120-frame video")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="more render flags, e.g. --extra=--exact (default: every output, as a user gets)")
    args = ap.parse_args()
    from da3gs.cli import build_parser
    from da3gs.apps.render import run_render
    from da3gs.io.images import list_images

    imgs, _ = list_images(args.images)
    print("| views | model | load s | inference s | write s | video s | total s | Gaussians |")
    print("|---|---|---|---|---|---|---|---|")
    for V in args.views:
        work = Path(tempfile.mkdtemp())
        (work / "v").mkdir()
        for i in range(V):
            src = imgs[i % len(imgs)]
            shutil.copy(src, work / "v" / f"{i:04d}{src.suffix}")
        rows = []
        for r in range(args.repeats):
            cli = ["render", "--views", str(work / "v"), "--out", str(work / f"o{r}"), "--model",
                   args.model, "--device", args.device, "-q", *args.extra]
            if not args.video:
                cli.append("--no-video")
            rows.append(run_render(build_parser().parse_args(cli)))
        med = lambda k: statistics.median(s["timings_s"].get(k, 0.0) for s in rows)  # noqa: E731
        # everything after inference but the video: Gaussian pruning/merge, the writes queued on
        # the writer threads and the wait for them (the video overlaps the writes)
        write = med("total") - med("load_model") - med("inference") - med("video")
        n = rows[0].get("gaussians", {}).get("final", 0)
        print(f"| {V} | {args.model} | {med('load_model'):.2f} | {med('inference'):.3f} | "
              f"{write:.2f} | {med('video'):.2f} | {med('total'):.2f} | {n} |", flush=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
