#!/usr/bin/env bash
# The GPU latency benchmark (`make bench-gpu`): random-weight models of the real shapes, fp16,
# every method in the registry at the standard budgets (hivtp/claims.py), HIVTP also at its own rule
# (no budget: the paper's operating point), plus the faithful (eager) HIVTP path.
# Needs only python with torch + transformers (no hydra / pandas / network).
#
# Writes results/latency/gpu-<device>-<date>/{latency.csv,summary.md,fingerprint.txt} under $OUT if
# set (lent GPU machines), else under the repository. One sub-folder per (model, batch, attn) run.
#
# Knobs (environment): MODELS, BATCHES, ATTNS (default: sdpa eager + flash_attention_2 if importable),
# REPEATS (10), WARMUP (2), NEW_TOKENS (32), PROMPT_TOKENS (60), FAITHFUL (1), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
MODELS=${MODELS:-"llava-1.5-7b llava-v1.6-vicuna-7b qwen2.5-vl-7b"}
BATCHES=${BATCHES:-"1 8"}
REPEATS=${REPEATS:-10}
WARMUP=${WARMUP:-2}
NEW_TOKENS=${NEW_TOKENS:-32}
PROMPT_TOKENS=${PROMPT_TOKENS:-60}
FAITHFUL=${FAITHFUL:-1}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench_gpu: torch sees no CUDA GPU here; run it on a GPU machine (CPU rows: python -m hivtp.latency --device cpu)." >&2
    exit 2
fi
if [ -z "${ATTNS:-}" ]; then
    ATTNS="sdpa eager"
    if "$PY" -c "import flash_attn" 2>/dev/null; then ATTNS="$ATTNS flash_attention_2"; fi
fi
DEVICE=$("$PY" -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name(0)).strip('-'))")
ROOT="${OUT:-.}/results/latency/gpu-$DEVICE-$(date -u +%Y%m%d)"
mkdir -p "$ROOT"
# Every method registered right now, besides none and hivtp, is a baseline timed at each budget;
# offline-only references (oracle, the offline reference) are not methods to deploy, so never timed.
BASELINES=$("$PY" -c "from hivtp.methods import METHODS; print(' '.join(m for m in sorted(METHODS) if m not in ('none', 'hivtp') and not METHODS[m].offline_only))")
{
    echo "device: $("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")"
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda); print('transformers', transformers.__version__)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
    echo "commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "baselines: ${BASELINES:-none registered}"
} > "$ROOT/fingerprint.txt"
cat "$ROOT/fingerprint.txt"

# The family's standard budgets, from the one module that holds them (standard library only).
budgets_for() {
    "$PY" hivtp/claims.py budgets "$1"
}

# Qwen2.5-VL's tower has no [CLS]: the methods that need one are refused there, so they are not timed.
baselines_for() {
    case "$1" in
        qwen*) "$PY" -c "from hivtp.methods import METHODS; print(' '.join(m for m in sorted(METHODS) if m not in ('none', 'hivtp') and not METHODS[m].offline_only and not METHODS[m].needs_cls))" ;;
        *) echo "$BASELINES" ;;
    esac
}

# The image every row is measured at: LLaVA-NeXT 672 x 672 (5 crops); Qwen2.5-VL 672 x 672 = 24 x 24 merged
# tokens (576, as LLaVA-1.5), with keep ratios as well as budgets; LLaVA-1.5 ignores it (336 px).
IMAGE_SIZE=${IMAGE_SIZE:-"672 672"}

for model in $MODELS; do
    methods="none hivtp"
    case "$model" in qwen*) methods="$methods hivtp:keep=0.25 hivtp:keep=0.5" ;; esac
    for b in $(budgets_for "$model"); do
        methods="$methods hivtp:budget=$b"
        for base in $(baselines_for "$model"); do methods="$methods $base:budget=$b"; done
    done
    for batch in $BATCHES; do
        for attn in $ATTNS; do
            run="$ROOT/$model-b$batch-$attn"
            if [ -f "$run/latency.csv" ]; then echo "bench_gpu: $run done, skipping"; continue; fi
            echo "bench_gpu: $model batch $batch $attn: $methods"
            extra=()
            [ "$FAITHFUL" = 1 ] && extra+=(--faithful)
            "$PY" -m hivtp.latency --model "$model" --random-weights --device cuda --dtype float16 \
                --attn "$attn" --batch "$batch" --repeats "$REPEATS" --warmup "$WARMUP" \
                --new-tokens "$NEW_TOKENS" --prompt-tokens "$PROMPT_TOKENS" --image-size $IMAGE_SIZE ${extra[@]+"${extra[@]}"} \
                --methods $methods --out "$run" > "$run.log" 2>&1 || { echo "bench_gpu: $run failed, see $run.log" >&2; tail -5 "$run.log" >&2; }
        done
    done
done

# One CSV and one summary for the whole device run.
"$PY" - "$ROOT" <<'PYEOF'
import sys
from pathlib import Path
from hivtp.latency import read_csv, summarize, write_csv
root = Path(sys.argv[1])
rows = [r for p in sorted(root.glob("*/latency.csv")) for r in read_csv(p)]
write_csv(rows, root / "latency.csv")
(root / "summary.md").write_text(summarize(rows))
print(f"bench_gpu: {len(rows)} rows -> {root / 'latency.csv'}, {root / 'summary.md'}")
PYEOF
