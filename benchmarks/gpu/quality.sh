#!/usr/bin/env bash
# The leave-one-animal-out quality benchmark (`spikemask bench quality`) spread over the
# processes of one machine, e.g. a GPU box with many cores: one pre-training per held-out
# animal, and one process per held-out session that trains MtM and temporal masking from
# scratch, fits the linear baseline, then waits for its animal's pre-training and
# fine-tunes. A last call joins everything into table.md / results.json / quality.png.
#
#   benchmarks/gpu/quality.sh OUT STEPS PRETRAIN_STEPS DATA_FOLDER...
#
# PRETRAIN_STEPS is one length or several in quotes ("5000 15000": one pre-training each,
# and each held-out session keeps the fine-tuning that is best on its validation split).
#
# Extra `spikemask bench quality` flags go in $BENCH_FLAGS (e.g. "--set train.lr=5e-4").
# Each process uses one CPU thread (OMP_NUM_THREADS=1) and the GPU when there is one.
set -u
out=$1 steps=$2 pretrain=$3
budget="--steps $steps"  # STEPS: optimiser steps (2000) or passes (300ep = --epochs 300)
[[ $steps == *ep ]] && budget="--epochs ${steps%ep}"
shift 3
mkdir -p "$out/logs"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
bench() { python3 -m spikemask bench quality "$@" --out "$out" $budget \
  --pretrain-steps $pretrain ${BENCH_FLAGS:-}; }
# "group session" lines, from the sessions' own metadata
mapfile -t pairs < <(python3 - "$@" <<'PY'
import sys
from spikemask.data.loading import load_sessions
for s in load_sessions(sys.argv[1:]):
    print(s.metadata["subject"], s.session_id)
PY
)
groups=$(printf '%s\n' "${pairs[@]}" | cut -d' ' -f1 | sort -u)
for group in $groups; do
  ( bench "$@" --held-out "$group" --parts pretrain >"$out/logs/pretrain-$group.log" 2>&1
    echo $? >"$out/logs/pretrain-$group.rc" ) &
done
for pair in "${pairs[@]}"; do
  group=${pair%% *} session=${pair#* }
  ( bench "$@" --held-out "$group" --sessions "$session" --parts mtm temporal linear \
      >"$out/logs/$session.log" 2>&1
    while [ ! -f "$out/logs/pretrain-$group.rc" ]; do sleep 2; done
    bench "$@" --held-out "$group" --sessions "$session" --parts finetune \
      >>"$out/logs/$session.log" 2>&1
    echo $? >"$out/logs/$session.rc" ) &
done
wait
python3 -m spikemask bench quality "$@" --out "$out" $budget \
  --pretrain-steps $pretrain --table-only ${BENCH_FLAGS:-} >"$out/logs/table.log" 2>&1
cat "$out/logs/table.log"
