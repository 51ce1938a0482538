#!/usr/bin/env bash
# The GPU latency benchmark (`make bench-gpu`): random-weight models of the real shapes, fp16, every
# method in the registry at the standard budgets (hivtp/claims.py), HIVTP also at its own rule and on
# the release's eager path; jobs most important first within a time budget (hivtp/latency/bench.py).
# Needs only python with torch + transformers (no hydra / pandas / network).
#
# Writes latency.csv, summary.md and fingerprint.txt (a flat folder) to
#   artifacts/bench-gpu/gpu-<device>-<date>/  and a copy to $OUT/bench-gpu/   on a lent GPU machine
#     ($OUT set: the device tool returns <= 8 files <= 2 folders down; artifacts/ survives between calls
#     on a warm machine, so the same command again measures what the first call had no time for);
#   results/latency/gpu-<device>-<date>/                                      anywhere else.
# On a lent machine pass the commit the working tree holds (it travels without .git):
#   HIVTP_COMMIT=<hash> BUDGET_S=480 make bench-gpu     (then copy $OUT/bench-gpu into results/latency/)
#
# Knobs (environment): MODELS, BATCHES ("1 8"), ATTNS ("sdpa eager"), REPEATS (3), MIN_REPEATS (2),
# WARMUP (1), NEW_TOKENS (32), PROMPT_TOKENS (60), FAITHFUL (1), BUDGET_S (480), PYTHON (python3);
# extra arguments go to `python -m hivtp.latency.bench` (e.g. --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench_gpu: torch sees no CUDA GPU here; run it on a GPU machine (CPU rows: python -m hivtp.latency --device cpu)." >&2
    exit 2
fi
DEVICE=$("$PY" -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name(0)).strip('-'))")
NAME="gpu-$DEVICE-$(date -u +%Y%m%d)"
args=(--budget-s "${BUDGET_S:-480}" --repeats "${REPEATS:-3}" --min-repeats "${MIN_REPEATS:-2}" --warmup "${WARMUP:-1}"
      --new-tokens "${NEW_TOKENS:-32}" --prompt-tokens "${PROMPT_TOKENS:-60}")
[ -n "${MODELS:-}" ] && args+=(--models $MODELS)
[ -n "${BATCHES:-}" ] && args+=(--batches $BATCHES)
[ -n "${ATTNS:-}" ] && args+=(--attns $ATTNS)
[ "${FAITHFUL:-1}" = 1 ] || args+=(--no-faithful)
if [ -n "${OUT:-}" ]; then
    args+=(--out "artifacts/bench-gpu/$NAME" --mirror "$OUT/bench-gpu")
else
    args+=(--out "results/latency/$NAME")
fi
exec "$PY" -m hivtp.latency.bench "${args[@]}" "$@"
