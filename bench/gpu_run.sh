#!/usr/bin/env bash
# One command for a short GPU window (an H100/H200 for ~15 minutes, start-up included): every GPU
# benchmark Hamner has, in about 9 minutes, each result written under bench/results/.
#
#   bash bench/gpu_run.sh [DATA_DIR]
#
# DATA_DIR holds tinystories_train_2MiB.txt and cosmo2_tokenizer.json (default ../shared/data,
# else ./shared/data). Steps, each with its own time limit so one slow step cannot eat the others':
#   1. kernel regression runs at the v3-50m shapes     -> results/kernels-<gpu>.json     (<= 170 s)
#   2. training throughput, all variants, v3-50m        -> results/throughput-v3-50m-*.json (<= 100 s)
#   3. RMSNorm backward tiling sweep (v3-50m, v2-164m)  -> results/rms_norm_sweep-<gpu>.json (<= 40 s)
#   4. short GPU speedrun (v3-50m: AdamW, three Muon recipes; the speedrun recipe on the speedrun
#      preset, with and without its sequence-length warm-up) -> results/speedrun-gpu.json (<= 220 s)
# A step that fails or runs out of time is reported at the end; the others still run.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
DATA="${1:-}"
if [ -z "$DATA" ]; then
    for candidate in ../shared/data shared/data; do
        [ -f "$candidate/tinystories_train_2MiB.txt" ] && DATA="$candidate" && break
    done
fi
mkdir -p bench/results
GPU=$(python -c "import torch; print(torch.cuda.get_device_name(0).lower().replace(' ', '-'))" 2>/dev/null) || {
    echo "error: no CUDA GPU visible to torch" >&2; exit 2; }
failed=()
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s) =="
    local start=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" || failed+=("$name (exit $?)")
    echo "== $name: $((SECONDS - start))s =="
}
step kernels 170 python -m pytest -q bench/test_kernels_bench.py -k v3-50m -p no:cacheprovider \
    --benchmark-json="bench/results/kernels-$GPU.json"
step throughput 100 python bench/throughput.py --preset v3-50m --steps 20 --warmup 5 \
    --out "bench/results/throughput-v3-50m-$GPU.json"
step rms_norm_sweep 40 python bench/rms_norm_sweep.py
if [ -n "$DATA" ]; then
    step speedrun 220 python bench/speedrun.py --config gpu --data-dir "$DATA" --out bench/results/speedrun-gpu.json
else
    failed+=("speedrun (no DATA_DIR with tinystories_train_2MiB.txt)")
fi
python bench/kernel_report.py "bench/results/kernels-$GPU.json" || true
echo "results:"; ls -l bench/results/
if [ ${#failed[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
