#!/usr/bin/env bash
# Training speed on a GPU machine, through `spikemask bench speed` (issue #11).
#
# From the repository root (no network needed, no install: PYTHONPATH=src):
#
#     OUT=/path/to/out bash benchmarks/gpu/speed.sh
#
# writes $OUT/speed.tar.gz with one folder per comparison (results.json, table.md, the log),
# summary.md (all tables) and machine.txt (nvidia-smi, versions, commit). At most 3 minutes
# wall on one H100 / H200: every comparison has its own time limit, cut further so that all
# of them end by the deadline ($SPIKEMASK_SPEED_DEADLINE_S, default 170 s), most important
# first; a comparison that ran out of time is marked failed in summary.md.
#
# SPIKEMASK_SPEED_TINY=1 runs the same comparisons on tiny shapes on the CPU (a check of
# the script itself, seconds per comparison).
set -uo pipefail

OUT=${OUT:?set OUT to the output folder}
PYTHON=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:-src}
dir="$OUT/speed"
mkdir -p "$dir"
start=$(date +%s)

if [[ "${SPIKEMASK_SPEED_TINY:-0}" == 1 ]]; then
    shape=(--units 11 --bins 7 --blocks 1 --block-steps 2 --warmup-steps 1 --peak-size 64 --device cpu)
    small_batch=3 large_batch=4 compile_warmup=1
    scale=10 deadline_s=${SPIKEMASK_SPEED_DEADLINE_S:-1500}  # a loaded CPU, compiling
else
    shape=(--units 668 --bins 100 --blocks 2 --block-steps 15 --warmup-steps 3)
    small_batch=16 large_batch=256 compile_warmup=6
    scale=1 deadline_s=${SPIKEMASK_SPEED_DEADLINE_S:-170}
fi
deadline=$((start + deadline_s))

bench() {  # name, time limit (s), then the arguments of `spikemask bench speed`
    local name=$1 limit=$(($2 * scale))
    shift 2
    local left=$((deadline - $(date +%s)))
    ((limit > left)) && limit=$left
    echo "== $name ($(($(date +%s) - start)) s, limit $limit s)"
    if ((limit < 5)); then
        echo "## $name: skipped (no time left)" >>"$dir/summary.md"
        return
    fi
    timeout "$limit" "$PYTHON" -c \
        'import sys; from spikemask.cli import main; sys.argv[0] = "spikemask"; sys.exit(main())' \
        bench speed --out "$dir/$name" "${shape[@]}" "$@" >"$dir/$name.log" 2>&1
    local code=$?
    if [[ -f "$dir/$name/table.md" ]]; then
        { echo "## $name"; echo; cat "$dir/$name/table.md"; echo; } >>"$dir/summary.md"
    else
        { echo "## $name: failed (exit $code)"; echo; tail -n 5 "$dir/$name.log"; echo; } >>"$dir/summary.md"
    fi
    tail -n 8 "$dir/$name.log"
}

{
    date -u
    git rev-parse HEAD 2>/dev/null || true
    nvidia-smi 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c 'import torch, lightning; print("torch", torch.__version__, "cuda", torch.version.cuda, "lightning", lightning.__version__)'
    nproc
} >"$dir/machine.txt" 2>&1

fp32=(--a train.precision=32 --label-a fp32 --b train.precision=bf16-mixed --label-b bf16)
bench paper-b${large_batch}-fp32-vs-bf16 40 --preset paper --batch-size "$large_batch" "${fp32[@]}"
# temporal masking: one attention graph (MtM's causal scheme, drawn 1 step in 4, would
# compile a second one, maybe inside the timed steps)
bench paper-b${large_batch}-bf16-compile 85 --preset paper --batch-size "$large_batch" \
    --masking temporal --warmup-steps "$compile_warmup" \
    --a train.precision=bf16-mixed --label-a "bf16 eager" \
    --b train.precision=bf16-mixed train.compile=true --label-b "bf16 compiled"
bench paper-b${small_batch}-fp32-vs-bf16 25 --preset paper --batch-size "$small_batch" "${fp32[@]}"
bench small-b${large_batch}-fp32-vs-bf16 20 --preset small --batch-size "$large_batch" "${fp32[@]}"

echo "total $(($(date +%s) - start)) s" | tee -a "$dir/summary.md"
tar -czf "$OUT/speed.tar.gz" -C "$OUT" speed
echo "wrote $OUT/speed.tar.gz"
