#!/usr/bin/env bash
# Smaller and faster backbones on the Omniglot development protocol (docs/training.md): the
# commands behind the README's "Compressed backbones" table, in one run.
#
#   1. a teacher (TEACHER, default resnet18, SIZE x SIZE gray, default 84) meta-trained with ProtoNet on
#      images_background_small1 (+ rotations and mirror images) for TEACHER_BUDGET;
#   2. its bundle with the fp16 ONNX and the verified INT8 models (`metaedge export --fp16-onnx --int8`);
#   3. the teacher pruned by 30% and 50% of its channels, each fine-tuned for FINETUNE_BUDGET
#      (`metaedge compress`), exported (the 50% one also in INT8);
#   4. conv4 at the same input size trained for STUDENT_BUDGET twice: alone, and distilled from the teacher
#      (`metaedge train --distill-from`) - the same wall time;
#   5. tools/bench/compress.py: every file evaluated on the same 1-shot episodes of the three small2-only
#      alphabets (5-way and 20-way, 95% CI, paired differences), its size and ONNX Runtime CPU latency at batch
#      1 and 32, all in the same run. The table goes to OUT_DIR/table.md, the numbers to OUT_DIR/compress.json.
#
#   tools/compress_protocol.sh [DATA_DIR] [OUT_DIR]
#
# Budgets are wall time (the defaults are the recommended full run, about 60 minutes of training plus ~10 of
# exports and measurements on 2 quiet cores); a smoke run: TEACHER_BUDGET=2m FINETUNE_BUDGET=30s
# STUDENT_BUDGET=1m EPISODES=200. Other settings: TEACHER, SIZE, EPISODES (1000), THREADS (all cores), PYTHON.
# Steps whose output exists are skipped (delete OUT_DIR/<step> to redo one). Run it on a quiet machine: the
# budgets are wall time and the latencies are measured here.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${METAEDGE_OMNIGLOT:-../shared/data/omniglot}}
OUT=${2:-out/compress_protocol}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TEACHER=${TEACHER:-resnet18}
SIZE=${SIZE:-84}
TEACHER_BUDGET=${TEACHER_BUDGET:-30m}
FINETUNE_BUDGET=${FINETUNE_BUDGET:-5m}
STUDENT_BUDGET=${STUDENT_BUDGET:-10m}
EPISODES=${EPISODES:-1000}
THREADS=${THREADS:-$(nproc)}
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT/bundles"
me() { "$PY" -m metaedge "$@"; }

TRAIN=(--data "omniglot:$DATA" --sets images_background_small1 --rotations 0,90,180,270 --mirror --augment light
       --size "$SIZE" --method protonet --ways 20 --shots 1 --queries 5 --no-val --threads "$THREADS" --seed 0
       --log-every 50 --no-progress --no-tensorboard)

step() {  # step NAME DONE_FILE COMMAND...: run unless DONE_FILE exists, log to OUT/NAME.log
  local name=$1 done=$2; shift 2
  if [ -e "$done" ]; then echo "== $name: done already ($done)"; return; fi
  echo "== $name ..."
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1 || { tail -n 20 "$OUT/$name.log"; echo "$name failed (log: $OUT/$name.log)"; exit 1; }
  echo "   $(( SECONDS - start )) s; $(tail -n 1 "$OUT/$name.log")"
}

step teacher "$OUT/teacher/last/model.json" \
  me train "${TRAIN[@]}" --backbone "$TEACHER" --time-budget "$TEACHER_BUDGET" --run-dir "$OUT/teacher"
step export-teacher "$OUT/bundles/teacher/manifest.json" \
  me export "$OUT/teacher/last" -o "$OUT/bundles/teacher" --fp16-onnx --int8 --force
for p in 30 50; do
  step "pruned$p" "$OUT/pruned$p/model.json" \
    me compress "$OUT/teacher/last" --prune "0.$p" --finetune "$FINETUNE_BUDGET" -o "$OUT/pruned$p" --threads "$THREADS" \
      --no-progress --force
  extra=(); [ "$p" = 50 ] && extra=(--int8)
  step "export-pruned$p" "$OUT/bundles/pruned$p/manifest.json" \
    me export "$OUT/pruned$p" -o "$OUT/bundles/pruned$p" "${extra[@]}" --force
done
step conv4-alone "$OUT/conv4-alone/last/model.json" \
  me train "${TRAIN[@]}" --backbone conv4 --time-budget "$STUDENT_BUDGET" --run-dir "$OUT/conv4-alone"
step conv4-distilled "$OUT/conv4-distilled/last/model.json" \
  me train "${TRAIN[@]}" --backbone conv4 --time-budget "$STUDENT_BUDGET" --run-dir "$OUT/conv4-distilled" \
    --distill-from "$OUT/teacher/last"
for s in conv4-alone conv4-distilled; do
  step "export-$s" "$OUT/bundles/$s/manifest.json" me export "$OUT/$s/last" -o "$OUT/bundles/$s" --force
done

B=$OUT/bundles
echo "== measuring (accuracy on $EPISODES episodes per setting, latency at batch 1 and 32, $THREADS threads) ..."
"$PY" tools/bench/compress.py --data "omniglot:$DATA" --episodes "$EPISODES" --threads "$THREADS" \
  --row "$TEACHER fp32=$B/teacher" --row "$TEACHER fp16=$B/teacher@fp16" --row "$TEACHER INT8=$B/teacher@int8" \
  --row "pruned 30%=$B/pruned30" --row "pruned 50%=$B/pruned50" --row "pruned 50% + INT8=$B/pruned50@int8" \
  --row "conv4 alone ($STUDENT_BUDGET)=$B/conv4-alone" \
  --row "conv4 distilled ($STUDENT_BUDGET)=$B/conv4-distilled" \
  --out "$OUT/compress.json" | tee "$OUT/table.md"
echo "budgets: teacher $TEACHER_BUDGET, fine-tuning $FINETUNE_BUDGET per pruned model, students $STUDENT_BUDGET each" \
  | tee -a "$OUT/table.md"
