#!/bin/bash
# Issue 23's run-through at >= 1 GB (docs/data.md, "A run-through at 1 GB"): build four per-language inputs of real
# text, tokenize (killed once, rerun), pretrain a tiny base on the store, lsn stats + select on the store, an LSN
# train on it with 2 processes, killed and rerun, compared step by step with an uninterrupted 2-process run.
#     bash benchmarks/data_runthrough.sh RUN_DIR [MB_PER_LANGUAGE (default 270)]
set -u
RT=$(realpath -m "$1"); S=$RT/store; cd "$(dirname "$0")/.."
T() { local s=$(date +%s.%N); "$@"; local rc=$?; echo "[rt] rc=$rc wall=$(echo "$(date +%s.%N) - $s" | bc) s: $*"; return $rc; }
uptime
python benchmarks/data_runthrough_inputs.py $RT/inputs ${2:-270}
echo "[rt] 1. tokenize, killed after 90 s, then rerun"
seallm-jax data tokenize th=$RT/inputs/th.jsonl vi=$RT/inputs/vi.jsonl.zst id=$RT/inputs/id.parquet en=$RT/inputs/en.txt --out $S --no-progress & P=$!
sleep 90; kill -9 $P; wait $P; echo "[rt] killed tokenize (pid $P) at 90 s"
T /usr/bin/time -v seallm-jax data tokenize th=$RT/inputs/th.jsonl vi=$RT/inputs/vi.jsonl.zst id=$RT/inputs/id.parquet en=$RT/inputs/en.txt --out $S --no-progress 2> $RT/tokenize.time
grep -E "Maximum resident|Elapsed|User time|System time" $RT/tokenize.time
python -c "import json; m=json.load(open('$S/manifest.json')); print({k: m[k] for k in m if k not in ('sources','shards','files','languages')}); print({l: {s: v.get('tokens') for s, v in d.get('splits', d).items()} if isinstance(d, dict) else d for l, d in m.get('languages', {}).items()})" 2>&1 | head -5
du -sh $S
echo "[rt] 2. a tiny base model pretrained on the store (1 process)"
T seallm-jax train --config configs/tiny.py --workdir $RT/base --config.data.source=tokens --config.data.path=$S \
  --config.train.steps=40 --config.train.seq_len=64 --config.train.global_batch_size=8 --config.checkpoint.every=20 \
  --config.train.eval_every=20 --config.train.progress_bar=false 2>&1 | tail -4
echo "[rt] 3. lsn stats on the store (2M tokens per language) and select"
T seallm-jax lsn stats --model $RT/base --languages en,id,vi,th --data en=$S --data id=$S --data vi=$S --data th=$S \
  --max-tokens 2000000 --seq-len 64 --out $RT/stats.npz --no-progress 2>&1 | tail -3
T seallm-jax lsn select --stats $RT/stats.npz --method lape --out $RT/neurons.json 2>&1 | tail -3
LSN="seallm-jax train --config configs/tiny.py --config.model.init_from=$RT/base --config.lsn.neurons=$RT/neurons.json \
  --config.lsn.languages=th --config.data.source=tokens --config.data.path=$S --config.data.languages=th \
  --config.train.steps=60 --config.train.seq_len=64 --config.train.global_batch_size=8 --config.checkpoint.every=10 \
  --config.train.eval_every=30 --config.train.progress_bar=false"
echo "[rt] 4a. LSN train, 2 processes x 2 devices, uninterrupted (reference)"
T python launch/local.py --num-processes 2 --devices-per-process 2 -- $LSN --workdir $RT/lsn-ref 2>&1 | tail -3
echo "[rt] 4b. the same, process 1 killed (SIGKILL) once step 35 is logged, then the same command again"
python launch/local.py --num-processes 2 --devices-per-process 2 -- $LSN --workdir $RT/lsn-th > $RT/lsn-kill.log 2>&1 & L=$!
until grep -q '"step": 3[5-9]' $RT/lsn-th/metrics.jsonl 2>/dev/null; do sleep 1; done
C1=$(ps --ppid $L -o pid= | sed -n 2p); kill -9 $C1; wait $L; echo "[rt] killed process 1 (pid $C1); launcher rc=$?"
tail -2 $RT/lsn-kill.log
T python launch/local.py --num-processes 2 --devices-per-process 2 -- $LSN --workdir $RT/lsn-th 2>&1 | grep -i -E "resum|error|step 100" | head -5
python - <<PY
import json
ref = {r["step"]: r for r in map(json.loads, open("$RT/lsn-ref/metrics.jsonl")) if "loss" in r}
got = {r["step"]: r for r in map(json.loads, open("$RT/lsn-th/metrics.jsonl")) if "loss" in r}
same = [s for s in ref if s in got and ref[s]["loss"] == got[s]["loss"]]
print(f"[rt] per-step training loss, resumed vs uninterrupted: {len(same)} of {len(ref)} steps identical; "
      f"final loss {got[max(got)]['loss']:.6f} vs {ref[max(ref)]['loss']:.6f}")
PY
uptime
