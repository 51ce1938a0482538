"""Results I/O: run folders -> tidy CSVs (with confidence intervals) -> tables, figures and the claims ledger.

Uses pandas and matplotlib (the `report` extra); the hivtp core never imports this package.
"""

from .collect import ACCURACY_COLUMNS, LATENCY_COLUMNS, BrokenRunsError, collect, read_runs, write_table_csv
from .ledger import ledger_markdown
from .tables import accuracy_table, accuracy_text_table, latency_table, to_latex, to_markdown

__all__ = [
    "ACCURACY_COLUMNS",
    "LATENCY_COLUMNS",
    "BrokenRunsError",
    "accuracy_table",
    "accuracy_text_table",
    "collect",
    "latency_table",
    "ledger_markdown",
    "read_runs",
    "to_latex",
    "to_markdown",
    "write_table_csv",
]
