#!/usr/bin/env bash
# Device call C: resume the generator to a step count that fits this call, export, bring back.
set -x
S=/root/stash; CLI=$S/rfgen-cli
test -f $S/default/checkpoint/state.json || { echo "STASH LOST"; exit 3; }
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
TRAIN_MIN=${TRAIN_MIN:-7.3}
STEPS=$(python3 - "$S/default/train_log.jsonl" "$TRAIN_MIN" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
seg = [rows[-1]]
for r in reversed(rows[:-1]):
    if r["elapsed_s"] >= seg[-1]["elapsed_s"]: break
    seg.append(r)
a, b = seg[-1], seg[0]
# steady rate over the last 70% of the segment (the first steps compile kernels)
a = seg[int(len(seg) * 0.7)]
rate = (b["step"] - a["step"]) / max(b["elapsed_s"] - a["elapsed_s"], 1e-9)
print(int((b["step"] + rate * float(sys.argv[2]) * 60) // 100 * 100))
PY
)
echo "resume to STEPS=$STEPS"
export CLI S STEPS MIN=$(python3 -c "print($TRAIN_MIN + 0.8)") RESUME=--resume
time bash $S/gen.sh 2>&1 | tr '\r' '\n' | awk 'NR%4==1 || /error|Error|panic|trained|budget|resum/' | tail -60
cp $S/default/model/config.json $S/default/model/model.safetensors $S/default/train_log.jsonl $OUT/ 2>/dev/null
cp $(ls -t $S/default/samples/*.png | head -1) $OUT/last-grid.png
echo "STEPS=$STEPS" > $OUT/steps.txt
echo C-DONE
