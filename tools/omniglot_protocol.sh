#!/usr/bin/env bash
# The Omniglot development protocol (docs/training.md) for ProtoNet, first-order MAML and
# Reptile: meta-train conv4 on images_background_small1 (rotations and mirror images as extra classes) for
# 19 minutes each, then evaluate 1,000 seeded episodes on the three small2-only alphabets (Japanese (katakana),
# Sanskrit, Tagalog; 28x28, strokes = 1), with 95% confidence intervals. These are the commands behind the
# README's "Few-shot accuracy" table.
#
#   tools/omniglot_protocol.sh [DATA_DIR] [OUT_DIR] [METHOD...]      # METHOD: protonet fomaml reptile (default: all)
#
# DATA_DIR holds the two zips (default $METAEDGE_OMNIGLOT, else ../shared/data/omniglot). Each method writes
# OUT_DIR/<method>/ (the run directory: checkpoint, metrics, TensorBoard), OUT_DIR/<method>.train.log and
# OUT_DIR/<method>.eval.N.json; a summary table is printed at the end. Run it on a quiet machine: the budget is
# wall time, so other jobs on the cores cost episodes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${METAEDGE_OMNIGLOT:-../shared/data/omniglot}}
OUT=${2:-out/omniglot_protocol}
shift $(( $# > 2 ? 2 : $# )) || true
METHODS=("$@")
[ ${#METHODS[@]} -eq 0 ] && METHODS=(protonet fomaml reptile)
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
BUDGET=${BUDGET:-19m}
THREADS=${THREADS:-$(nproc)}
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"

TRAIN=(--data "omniglot:$DATA" --sets images_background_small1 --rotations 0,90,180,270 --mirror --augment light
       --no-val --time-budget "$BUDGET" --threads "$THREADS" --seed 0 --log-every 100 --no-progress)
EVAL=(--data "omniglot:$DATA" --sets images_background_small2 --alphabets 'Japanese_(katakana),Sanskrit,Tagalog'
      --shots 1 --queries 15 --episodes 1000 --seed 0 --threads "$THREADS" --no-progress --json)

for method in "${METHODS[@]}"; do
  case $method in
    protonet) opts=(--method protonet --ways 30 --shots 1 --queries 5)
              evals=("--ways 20 5 --method prototype") ;;
    fomaml)   opts=(--method fomaml --head-init proto --inner-steps 3 --inner-lr 0.01 --ways 5 --shots 1 --queries 15)
              evals=("--ways 5 --method maml" "--ways 20 5 --method prototype") ;;
    reptile)  opts=(--method reptile --head-init proto --inner-steps 5 --inner-lr 0.05 --ways 5 --shots 1 --queries 15)
              evals=("--ways 5 --method reptile" "--ways 20 5 --method prototype") ;;
    *) echo "unknown method '$method' (expected protonet, fomaml or reptile)" >&2; exit 2 ;;
  esac
  if [ -e "$OUT/$method/config.json" ]; then
    echo "== $method: $OUT/$method exists, evaluating it (delete it to train again)"
  else
    echo "== $method: training for $BUDGET ..."
    "$PY" -m metaedge train "${TRAIN[@]}" "${opts[@]}" --run-dir "$OUT/$method" > "$OUT/$method.train.log" 2>&1
    tail -n 2 "$OUT/$method.train.log"
  fi
  rm -f "$OUT/$method".eval.*.json
  n=0
  for e in "${evals[@]}"; do
    n=$((n + 1))
    # shellcheck disable=SC2086  # $e is a list of options
    "$PY" -m metaedge eval "$OUT/$method" "${EVAL[@]}" $e > "$OUT/$method.eval.$n.json"
  done
done

"$PY" - "$OUT" "${METHODS[@]}" <<'EOF'
import glob, json, os, re, sys
out, methods = sys.argv[1], sys.argv[2:]
print(f"\n| method | training | evaluation | accuracy (95% CI, 1,000 episodes) |\n|---|---|---|---|")
for m in methods:
    trained = "see its run directory"
    log = f"{out}/{m}.train.log"
    done = re.findall(r"(\d+) episodes in (\d+)s", open(log).read()) if os.path.exists(log) else []
    if done:  # the trainer's last line: "N episodes in Ts (reason)"
        trained = f"{done[-1][0]} episodes, {done[-1][1]} s"
    for path in sorted(glob.glob(f"{out}/{m}.eval.*.json")):
        for r in json.load(open(path))["reports"]:
            print(f"| {m} | {trained} | {r['ways']}-way {r['shots']}-shot, {r['method']} | "
                  f"{100 * r['mean']:.2f} +- {100 * r['ci95']:.2f}% |")
EOF
