#!/usr/bin/env bash
# One prepared check for a machine with a GPU (or TPU), under 10 minutes, one JSON out (issue 12).
#
#   benchmarks/device_check.sh [OUTDIR]            # on the accelerator; OUTDIR defaults to $OUT, else /tmp/device_check
#   benchmarks/device_check.sh --cpu-smoke [OUTDIR]  # tiny shapes on CPU: proves every step runs (no numbers)
#
# Steps (each under `timeout`, a failed step is recorded and the next one runs; a step is skipped when
# less time is left than it needs, so the whole run stays inside the 570 s budget):
#   1. parity     pytest: logits vs transformers, HF/Orbax round trips, greedy decoding vs transformers.generate
#   2. mfu        benchmarks/device_mfu.py: train-step tokens/s and MFU, Qwen2-0.5B and 1.5B shapes, bf16
#   3. memory_*   benchmarks/memory.py --budget --row ROW --measure: the compiled per-device budget (XLA's
#                 memory_analysis() of the step compiled for this device) and, running two steps for real,
#                 memory_stats() peak_bytes_in_use; rows 0.5b-full, 7b-lsn-lean, then 7b-lsn-lean-bf16 (its CPU
#                 temporaries include float32 copies of the bf16 kernels; this is the accelerator number)
#                 and 7b-lsn-dense (may OOM:
#                 ~118 GiB compiled on CPU; an OOM is a result too)
#   4. decode     benchmarks/decode.py (new vs old cache path) when it exists, else skipped with a message
# Output: OUTDIR/device_check.json (steps with rc, seconds, their JSON results, log tails) and OUTDIR/logs/*.log.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
DIR=""
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) DIR="$arg" ;;
  esac
done
DIR="${DIR:-${OUT:-/tmp/device_check}}"
mkdir -p "$DIR/logs" "$DIR/parts"
: > "$DIR/steps.tsv"
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-570}
START=$(date +%s)

export TF_CPP_MIN_LOG_LEVEL=3 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu
else
  # Set but empty: JAX picks the accelerator, and tests/conftest.py's setdefault('JAX_PLATFORMS', 'cpu')
  # leaves it alone.
  export JAX_PLATFORMS=""
fi
PY=${PYTHON:-python}

PLATFORM=$($PY -c "import jax; print(jax.devices()[0].platform)" 2>/dev/null || echo none)
echo "device_check: platform $PLATFORM, smoke $SMOKE, output $DIR"
if [ "$SMOKE" = 0 ] && [ "$PLATFORM" != gpu ] && [ "$PLATFORM" != tpu ]; then
  echo "device_check: no GPU/TPU visible to JAX (platform '$PLATFORM'); use --cpu-smoke on CPU" >&2
  exit 2
fi
$PY - > "$DIR/parts/env.json" 2> "$DIR/logs/env.log" <<'EOF'
import json, platform, subprocess
import jax
devices = jax.devices()
info = {"jax": jax.__version__, "python": platform.python_version(), "platform": devices[0].platform,
        "device_kind": devices[0].device_kind, "device_count": len(devices),
        "memory_stats": devices[0].memory_stats()}
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                         "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as error:  # no nvidia-smi (TPU, CPU)
    info["nvidia_smi"] = f"unavailable: {type(error).__name__}"
try:
    info["git_head"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as error:
    info["git_head"] = f"unavailable: {type(error).__name__}"
print(json.dumps(info, default=str))
EOF

# step NAME SECONDS COMMAND...: run under a timeout, record rc and time; skip when the budget is short.
step() {
  local name=$1 need=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -lt "$need" ]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "only ${left}s of the budget left, the step needs ${need}s" >> "$DIR/steps.tsv"
    echo "[$name] skipped: ${left}s left, needs ${need}s"
    return
  fi
  local t0=$(date +%s.%N)
  timeout -k 15 "$need" "$@" > "$DIR/logs/$name.log" 2>&1
  local rc=$?
  local secs=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$*" >> "$DIR/steps.tsv"
  echo "[$name] rc=$rc in ${secs}s"
  tail -n 6 "$DIR/logs/$name.log" | sed 's/^/    /'
}

if [ "$SMOKE" = 1 ]; then
  step parity 180 $PY -m pytest -q -p no:cacheprovider tests/test_model.py -k "logits_match_transformers"
  step mfu 120 $PY -m benchmarks.device_mfu --cpu-smoke --json "$DIR/parts/mfu.json"
  step memory_tiny 120 $PY benchmarks/memory.py --budget --config configs/tiny.py --measure \
    --json "$DIR/parts/memory_tiny.json"
  step memory_0.5b-full 120 $PY benchmarks/memory.py --budget --row 0.5b-full --layers 2 \
    --config.train.seq_len=512 --json "$DIR/parts/memory_0.5b-full.json"
  DECODE_ARGS="--num-hidden-layers 2 --hidden-size 64 --intermediate-size 128 --num-attention-heads 4 \
    --num-key-value-heads 2 --vocab-size 512 --prompt-length 16 --new-tokens 8 --paths new,old"
else
  step parity 140 $PY -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_hf.py tests/test_generate.py \
    -k "logits_match or bit_identical or round_trip or greedy_equals_transformers"
  step mfu 160 $PY -m benchmarks.device_mfu --shapes 0.5b,1.5b --batch 4 --seq 2048 --steps 5 \
    --json "$DIR/parts/mfu.json"
  step memory_0.5b-full 60 $PY benchmarks/memory.py --budget --row 0.5b-full --measure \
    --json "$DIR/parts/memory_0.5b-full.json"
  step memory_7b-lsn-lean 110 $PY benchmarks/memory.py --budget --row 7b-lsn-lean --measure \
    --json "$DIR/parts/memory_7b-lsn-lean.json"
  DECODE_ARGS="--paths new,old"
fi

if [ -f benchmarks/decode.py ]; then
  # shellcheck disable=SC2086
  step decode 80 $PY -m benchmarks.decode $DECODE_ARGS
else
  printf 'decode\tskipped\t0\t%s\n' "benchmarks/decode.py does not exist in this checkout" >> "$DIR/steps.tsv"
  echo "[decode] skipped: benchmarks/decode.py does not exist in this checkout"
fi
if [ "$SMOKE" = 0 ]; then
  step memory_7b-lsn-lean-bf16 110 $PY benchmarks/memory.py --budget --row 7b-lsn-lean-bf16 --measure \
    --json "$DIR/parts/memory_7b-lsn-lean-bf16.json"
  step memory_7b-lsn-dense 110 $PY benchmarks/memory.py --budget --row 7b-lsn-dense --measure \
    --json "$DIR/parts/memory_7b-lsn-dense.json"
fi

$PY - "$DIR" "$SMOKE" "$(( $(date +%s) - START ))" <<'EOF'
import json, os, sys
out, smoke, seconds = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
def load(name):
    path = os.path.join(out, "parts", name + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
steps = []
with open(os.path.join(out, "steps.tsv"), encoding="utf-8") as f:
    for line in f:
        name, rc, secs, detail = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
        log = os.path.join(out, "logs", name + ".log")
        tail = open(log, encoding="utf-8", errors="replace").read()[-3000:] if os.path.exists(log) else ""
        steps.append({"name": name, "rc": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                      "seconds": float(secs), "command_or_reason": detail, "result": load(name), "log_tail": tail})
report = {"cpu_smoke": smoke, "seconds": seconds, "env": load("env"), "steps": steps,
          "ok": all(s["rc"] == 0 for s in steps if not s["skipped"])}
path = os.path.join(out, "device_check.json")
with open(path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1, default=str)
print(f"device_check: {'ok' if report['ok'] else 'FAILED steps: ' + ', '.join(s['name'] for s in steps if s['rc'] not in (0, None))}"
      f" in {seconds}s -> {path}")
EOF
