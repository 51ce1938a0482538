"""``python -m hivtp.results RUNS_ROOT RESULTS_DIR [--lenient]``: collect run folders into the CSVs
(:mod:`hivtp.results.collect`); ``make figures`` (scripts/figures.py) then renders tables, figures and
the ledger from them."""

from .collect import main

if __name__ == "__main__":
    raise SystemExit(main())
