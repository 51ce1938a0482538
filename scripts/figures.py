"""Regenerate every table, figure and the ledger from the CSVs under results/ alone (`make figures`).

    python scripts/figures.py [--results results]

Reads results/accuracy.csv and results/latency.csv; writes results/tables/*.md|*.tex,
results/figures/*.png|*.pdf and results/ledger.md. The token picture needs a model: scripts/reproduce.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivtp.results.report import write_reports  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="folder holding accuracy.csv / latency.csv")
    args = parser.parse_args(argv)
    written = write_reports(args.results)
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
