"""Results I/O: run folders -> tidy CSVs -> tables, figures and the claims ledger.

Uses pandas and matplotlib (the `report` extra); the hivtp core never imports this package.
"""

from .collect import ACCURACY_COLUMNS, LATENCY_COLUMNS, collect, read_rows, write_table_csv
from .ledger import ledger_markdown
from .tables import accuracy_table, latency_table, to_latex, to_markdown

__all__ = [
    "ACCURACY_COLUMNS",
    "LATENCY_COLUMNS",
    "accuracy_table",
    "collect",
    "latency_table",
    "ledger_markdown",
    "read_rows",
    "to_latex",
    "to_markdown",
    "write_table_csv",
]
