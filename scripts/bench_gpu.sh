#!/usr/bin/env bash
# The GPU latency benchmark (`make bench-gpu`): random-weight models of the real shapes, fp16, HIVTP and
# the paper profile's baselines at the standard budgets (hivtp/claims.py), HIVTP also at its own rule
# and on the release's eager path; jobs most important first within a time budget
# (hivtp/latency/bench.py). Needs only python with torch + transformers (no hydra / network).
#
# Writes latency.csv, summary.md, jobs.json and fingerprint.txt (one flat folder) to
#   results/latency/gpu-<device>-<date>/   (resumed: the same command again measures what is missing)
# and, on a lent GPU machine ($OUT set), a copy to $OUT/bench-gpu/: the device tool hands back at most
# eight files, two folders down. Copy them back into results/latency/gpu-<device>-<date>/ here: they
# are the results to commit, and the tree that travels with the next call, which resumes from them.
# The tree travels without .git, so pass the commit:
#   HIVTP_COMMIT=<hash> BUDGET_S=480 make bench-gpu     (run's timeout_s: BUDGET_S + 120)
#
# Knobs (environment): MODELS, BATCHES ("1 8"), ATTNS ("sdpa eager"), REPEATS (3), MIN_REPEATS (2),
# WARMUP (1), NEW_TOKENS (32), PROMPT_TOKENS (60), FAITHFUL (1), BUDGET_S (480), BENCH_DIR (the output
# folder), PYTHON (python3); extra arguments go to `python -m hivtp.latency.bench` (e.g. --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

case " $* " in *" --dry-run "*) DRY=1 ;; *) DRY=0 ;; esac
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench_gpu: torch sees no CUDA GPU here; run it on a GPU machine (CPU rows: python -m hivtp.latency --device cpu; the plan: --dry-run)." >&2
    exit 2
fi
if [ "$DRY" = 1 ]; then DEVICE=dry-run; else
    DEVICE=$("$PY" -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name(0)).strip('-'))")
fi
args=(--out "${BENCH_DIR:-results/latency/gpu-$DEVICE-$(date -u +%Y%m%d)}"
      --budget-s "${BUDGET_S:-480}" --repeats "${REPEATS:-3}" --min-repeats "${MIN_REPEATS:-2}" --warmup "${WARMUP:-1}"
      --new-tokens "${NEW_TOKENS:-32}" --prompt-tokens "${PROMPT_TOKENS:-60}")
[ -n "${MODELS:-}" ] && args+=(--models $MODELS)
[ -n "${BATCHES:-}" ] && args+=(--batches $BATCHES)
[ -n "${ATTNS:-}" ] && args+=(--attns $ATTNS)
[ "${FAITHFUL:-1}" = 1 ] || args+=(--no-faithful)
[ -n "${OUT:-}" ] && args+=(--mirror "$OUT/bench-gpu")
exec "$PY" -m hivtp.latency.bench "${args[@]}" "$@"
