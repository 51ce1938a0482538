"""Regenerate every table, figure and the ledger from the CSVs under results/ alone (`make figures`).

    python scripts/figures.py [--results results]

Reads results/accuracy.csv and results/latency.csv (written from run folders by the collector,
`python -m hivtp.results RUNS_ROOT results`, with each score's n, 95% interval and paired differences);
writes results/tables.md + results/tables/*.tex (scores with ± half-widths, marks where a paired interval
excludes zero), results/figures/*.png|*.pdf (accuracy with error bars) and results/ledger.md. The token
picture needs a model: scripts/reproduce.py.
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
