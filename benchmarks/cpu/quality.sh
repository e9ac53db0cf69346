#!/usr/bin/env bash
# The leave-one-animal-out quality benchmark (`spikemask bench quality`) on a CPU machine,
# as a queue of single-thread jobs run WORKERS at a time (one per free core): for each seed,
# one pre-training per held-out animal, MtM and temporal masking from scratch per session,
# then the fine-tunings (each waits for its animal's pre-training); the linear baseline once
# per session (it has no seed). A last call joins everything into table.md / results.json /
# quality.png: with several seeds, the mean over seeds, each animal's range and the seeds in
# which each comparison holds.
#
#   benchmarks/cpu/quality.sh OUT STEPS PRETRAIN_STEPS WORKERS "SEEDS" DATA_FOLDER...
#
# e.g. benchmarks/cpu/quality.sh bench/q 300ep "5000 15000" 2 "0 1 2" ../shared/data/steinmetz2019/*/
# PRETRAIN_STEPS is one length or several in quotes (each held-out session keeps the best on
# its validation split).
# STEPS is a number of optimiser steps (2000) or of passes over each session's training
# trials (300ep = --epochs 300).
# With one seed the runs go into OUT; with several into OUT/seed-K. Extra `spikemask bench
# quality` flags go in $BENCH_FLAGS. Rerunning resumes: finished runs are reused.
set -u
out=$1 steps=$2 pretrain=$3 workers=$4 seeds=$5
shift 5
mkdir -p "$out/logs"
budget="--steps $steps"
[[ $steps == *ep ]] && budget="--epochs ${steps%ep}"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 OUT=$out BUDGET="$budget" PRETRAIN=$pretrain SEEDS=$seeds
export DATA="$*" BENCH_FLAGS=${BENCH_FLAGS:-}
job() {  # KIND SEED GROUP SESSION
  local kind=$1 seed=$2 group=$3 session=$4 dir=$OUT
  [ "$(wc -w <<<"$SEEDS")" -gt 1 ] && dir=$OUT/seed-$seed
  local log=$OUT/logs/$seed-$group-$session-$kind
  bench() { python3 -m spikemask bench quality $DATA $BUDGET --pretrain-steps $PRETRAIN \
    --held-out "$group" $BENCH_FLAGS "$@"; }
  case $kind in
    pretrain) bench --out "$dir" --seed "$seed" --parts pretrain >"$log.log" 2>&1 ;;
    linear) bench --out "$OUT" --seed "$seed" --sessions "$session" --parts linear >"$log.log" 2>&1 ;;
    finetune)
      while [ ! -f "$OUT/logs/$seed-$group-x-pretrain.rc" ]; do sleep 5; done
      bench --out "$dir" --seed "$seed" --sessions "$session" --parts finetune >"$log.log" 2>&1 ;;
    *) bench --out "$dir" --seed "$seed" --sessions "$session" --parts "$kind" >"$log.log" 2>&1 ;;
  esac
  echo $? >"$log.rc"
}
export -f job
# "group session" lines, from the sessions' own metadata
mapfile -t pairs < <(python3 - "$@" <<'PY'
import sys
from spikemask.data.loading import load_sessions
for s in load_sessions(sys.argv[1:]):
    print(s.metadata["subject"], s.session_id)
PY
)
groups=$(printf '%s\n' "${pairs[@]}" | cut -d' ' -f1 | sort -u)
first=${seeds%% *}
{
  for seed in $seeds; do
    for group in $groups; do echo "pretrain $seed $group x"; done
    for pair in "${pairs[@]}"; do
      for kind in mtm temporal; do echo "$kind $seed $pair"; done
      [ "$seed" = "$first" ] && echo "linear $seed $pair"
    done
    for pair in "${pairs[@]}"; do echo "finetune $seed $pair"; done
  done
} | xargs -P "$workers" -L 1 bash -c 'job "$0" "$1" "$2" "$3"'
python3 -m spikemask bench quality "$@" --out "$out" $budget --pretrain-steps $pretrain \
  --seed $seeds --table-only ${BENCH_FLAGS:-} >"$out/logs/table.log" 2>&1
cat "$out/logs/table.log"
