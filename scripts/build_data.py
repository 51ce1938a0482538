"""Build the offline mini-benchmarks (``make data``) under artifacts/data/ from the procedural world.

    python scripts/build_data.py [--size 1000] [--seed 0] [--out artifacts/data]

1000 questions per benchmark (the most `make reproduce FULL=1` asks for) take a few minutes on one
core and about 1 GB; a larger build starts with the same questions as a smaller one, so a score at a
given limit does not depend on the size built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.builders import build_all  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000, help="questions per split (default 1000; MME: rounded down to pairs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "data")
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("--size must be at least 1")
    build_all(args.out, args.size, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
