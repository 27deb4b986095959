#!/usr/bin/env bash
# Learning without labels on the Omniglot development protocol (../shared/data/omniglot/README.md): conv4, every
# model evaluated on the three small2-only alphabets (Japanese (katakana), Sanskrit, Tagalog; 106 characters,
# 28x28, strokes = 1), 5-way and 20-way 1-shot, 1,000 seeded episodes, 95% confidence intervals. These are the
# commands behind the README's "Learning without labels" tables.
#
#   tools/omniglot_unsupervised.sh [DATA_DIR] [OUT_DIR]          # BUDGET=19m: the wall time of EVERY row
#
# Table 1, unsupervised only: `metaedge pretrain` on small1's images with the labels removed (their rotations
#   and mirror images as more unlabelled images), BUDGET of SimCLR.
# Table 2, label-scarce: labels for 10% of small1's characters (a seeded class split: 14 of 136 characters,
#   with their rotations and mirror images), all of small1's images unlabelled; every row gets BUDGET in all:
#   a) ProtoNet meta-trained on the labelled 10% alone (the protocol's ProtoNet settings);
#   b) SimCLR pretraining on all images for PRETRAIN_SHARE (0.5) of BUDGET, then ProtoNet from it (--init) on the
#      10% for the rest;
#   c) as b), but the meta-training mixes in unsupervised episodes of all images (--unlabelled, half the episodes).
#
# DATA_DIR holds the two zips (default $METAEDGE_OMNIGLOT, else ../shared/data/omniglot). Every run writes its run
# directory and a log under OUT_DIR (an existing run directory is evaluated again, not retrained; delete it to
# retrain). The budgets are wall time: run it on a quiet machine. BUDGET=3m checks the pipeline in ~15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${METAEDGE_OMNIGLOT:-../shared/data/omniglot}}
OUT=${2:-out/omniglot_unsupervised}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
BUDGET=${BUDGET:-19m}
PRETRAIN_SHARE=${PRETRAIN_SHARE:-0.5}
THREADS=${THREADS:-$(nproc)}
EPISODES=${EPISODES:-1000}
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"

seconds() {  # 19m / 90s / 1.5h / 600 -> seconds
  "$PY" -c "import sys; from metaedge.train.config import parse_duration; print(int(parse_duration(sys.argv[1])))" "$1"
}
TOTAL=$(seconds "$BUDGET")
PRE=$(awk -v t="$TOTAL" -v s="$PRETRAIN_SHARE" 'BEGIN { printf "%d", t * s }')
FEW=$((TOTAL - PRE))

SMALL1=(--data "omniglot:$DATA" --sets images_background_small1 --rotations 0,90,180,270 --mirror)
LABELLED=("${SMALL1[@]}" --split train --split-fractions 0.1 0 0.9 --data-seed 0)   # 10% of the characters
RUN=(--no-val --threads "$THREADS" --seed 0 --log-every 50 --no-progress)
# the settings that did best in the short tuning runs (README: "Learning without labels"): SimCLR (BYOL, PsCo and
# ProtoNet on unsupervised episodes learnt less in the same number of steps), glyph augmentations, 256 images x 2
# views, temperature 0.2, Adam 1e-3, cosine lr; then ProtoNet at the protocol's settings and lr (3e-4 did worse)
SIMCLR=(--method simclr --batch-size 256 --temperature 0.2 --augment glyphs --lr 1e-3)
PROTONET=(--method protonet --ways 30 --shots 1 --queries 5 --augment light)
EVAL=(--data "omniglot:$DATA" --sets images_background_small2 --alphabets 'Japanese_(katakana),Sanskrit,Tagalog'
      --ways 5 20 --shots 1 --queries 15 --episodes "$EPISODES" --seed 0 --threads "$THREADS" --no-progress --json)

run() {  # run NAME COMMAND...: train unless OUT/NAME exists, log to OUT/NAME.log
  local name=$1; shift
  if [ -e "$OUT/$name/config.json" ]; then
    echo "== $name: $OUT/$name exists, kept (delete it to train again)"
  else
    echo "== $name: $*"
    "$PY" -m metaedge "$@" --run-dir "$OUT/$name" > "$OUT/$name.log" 2>&1 || { tail -n 20 "$OUT/$name.log"; exit 1; }
    tail -n 2 "$OUT/$name.log"
  fi
}
evaluate() {  # evaluate NAME: the row's final model on the small2-only alphabets
  "$PY" -m metaedge eval "$OUT/$1" "${EVAL[@]}" > "$OUT/$1.eval.json"
}

echo "budget per row: ${TOTAL}s (pretraining ${PRE}s + meta-training ${FEW}s in rows b and c)"
run unsupervised pretrain "${SMALL1[@]}" "${SIMCLR[@]}" "${RUN[@]}" --time-budget "$TOTAL"
evaluate unsupervised
run scarce-alone train "${LABELLED[@]}" "${PROTONET[@]}" "${RUN[@]}" --time-budget "$TOTAL"
evaluate scarce-alone
run scarce-pretrain pretrain "${SMALL1[@]}" "${SIMCLR[@]}" "${RUN[@]}" --time-budget "$PRE"
run scarce-pretrain-then-protonet train "${LABELLED[@]}" "${PROTONET[@]}" "${RUN[@]}" --time-budget "$FEW" \
    --init "$OUT/scarce-pretrain/last"
evaluate scarce-pretrain-then-protonet
run scarce-pretrain-then-mixed train "${LABELLED[@]}" "${PROTONET[@]}" "${RUN[@]}" --time-budget "$FEW" \
    --init "$OUT/scarce-pretrain/last" --unlabelled "omniglot:$DATA" --unlabelled-ratio 0.5
evaluate scarce-pretrain-then-mixed

"$PY" - "$OUT" <<'EOF'
import json, os, re, sys
out = sys.argv[1]
rows = [("1: no labels", "unsupervised", "SimCLR on small1's images (labels removed)"),
        ("2: 10% labelled", "scarce-alone", "ProtoNet on the labelled 10% alone"),
        ("2: 10% labelled", "scarce-pretrain-then-protonet", "SimCLR on all images, then ProtoNet --init on the 10%"),
        ("2: 10% labelled", "scarce-pretrain-then-mixed", "SimCLR, then ProtoNet --init on the 10% + unsupervised episodes")]

def trained(name):
    log = f"{out}/{name}.log"
    done = re.findall(r"(\d+) episodes in (\d+)s", open(log).read()) if os.path.exists(log) else []
    return f"{done[-1][0]} episodes, {done[-1][1]} s" if done else "see its run directory"

print("\n| table | row | training | 20-way 1-shot | 5-way 1-shot |\n|---|---|---|---|---|")
for table, name, what in rows:
    path = f"{out}/{name}.eval.json"
    if not os.path.exists(path):
        continue
    acc = {r["ways"]: f"{100 * r['mean']:.2f} +- {100 * r['ci95']:.2f}%" for r in json.load(open(path))["reports"]}
    steps = trained(name)
    if name.startswith("scarce-pretrain-then"):
        steps = f"{trained('scarce-pretrain')} + {steps}"
    print(f"| {table} | {what} | {steps} | {acc.get(20, '')} | {acc.get(5, '')} |")
EOF
