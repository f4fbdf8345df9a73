#!/usr/bin/env bash
# Issue demo: a guarded answer through the official openai client, before and after
# calibrating Swahili. Source-only gate on en/de/fr/zh → serve → ask → calibrate sw with
# 4 + 4 built-in train examples → serve → ask again.
#   bash scripts/openai_demo.sh [MODEL] [LAYER] [OUT_DIR]
set -euo pipefail
MODEL="${1:-qwen2.5-coder-1.5b}"
LAYER="${2:-auto}"
OUT="${3:-runs/openai-demo}"
PORT="${PORT:-8765}"
BIN="${BIN:-.venv/bin}"
mkdir -p "$OUT"

"$BIN/babelgate" fit --model "$MODEL" --languages en,de,fr,zh --layer "$LAYER" --n-train 16 \
    --out "$OUT/gate" --no-progress
"$BIN/python" - "$OUT/sw4.jsonl" <<'PY'
import json, sys
from babelgate.loaders import load_prompts
rows = load_prompts("builtin").sample("sw", 4, seed=0)
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for p in rows:
        f.write(json.dumps({"text": p.text, "language": "sw", "label": p.label}, ensure_ascii=False) + "\n")
PY

ask() {
    "$BIN/babelgate" serve "$OUT/gate" --api-key demo-key --port "$PORT" --log-level warning &
    local server=$!
    for _ in $(seq 1 180); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
    "$BIN/python" scripts/openai_demo.py --port "$PORT" --model "$MODEL" --harmless 10 || true
    kill -INT "$server"; wait "$server" || true
}

echo "### source-only gate (no Swahili calibration)"
ask
"$BIN/babelgate" calibrate "$OUT/gate" --lang sw --examples "$OUT/sw4.jsonl" --budget 4 --no-progress
echo "### after: babelgate calibrate $OUT/gate --lang sw --examples $OUT/sw4.jsonl --budget 4"
ask
