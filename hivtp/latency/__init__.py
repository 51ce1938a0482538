"""Latency of visual token pruning, measured properly (issue 6; harness.md "Latency protocol").

    from hivtp.latency import measure, summarize, write_csv
    rows = measure(model="tiny-llava", methods=[("none", {}), ("hivtp", {}), ("hivtp", {"budget": 128})])
    print(summarize(rows)); write_csv(rows, "latency.csv")

Command line: ``python -m hivtp.latency --model tiny-llava --random-weights --methods none hivtp
hivtp:budget=128 --out DIR``; every GPU measurement the project has, within a time budget:
``python -m hivtp.latency.bench`` (``make bench-gpu``). Imports torch, transformers and the standard library only, so it
runs on bare GPU machines.
"""

from .flops import stage_flops
from .measure import COLUMNS, measure, with_faithful
from .report import PAPER_CLAIMS, read_csv, summarize, write_csv
from .stages import STAGES
from .timing import check_device

__all__ = [
    "measure", "summarize", "write_csv", "read_csv", "stage_flops", "with_faithful",
    "check_device", "COLUMNS", "STAGES", "PAPER_CLAIMS",
]
