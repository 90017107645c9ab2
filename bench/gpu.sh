#!/usr/bin/env bash
# Every bench in bench/ on one machine, with --device where the bench has it, each one's output in
# bench/results/gpu-<UTC date-time>/<bench>.txt, then a summary (status, seconds, last line of each).
#
#   bench/gpu.sh                        # on a GPU machine: the CUDA unit tests, then every bench at full size
#   bench/gpu.sh --device cpu --quick   # anywhere: small shapes, to check the script and the benches run
#
# Options: --device cuda|cpu (default cuda), --quick (small shapes and few repeats), --only NAME[,NAME...]
# (run those benches alone), --timeout SECONDS (per bench; default 3600, 900 with --quick).
# PYTHON names the interpreter (default: python3); run from a checkout whose environment has the server's
# dependencies installed. A bench that fails or times out is reported and the rest still run; the exit status
# is the number of failures.
set -u

device=cuda
quick=0
only=""
timeout_s=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --only) only="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$device" in cpu|cuda) ;; *) echo "--device must be cpu or cuda" >&2; exit 2 ;; esac
[ -n "$timeout_s" ] || timeout_s=$([ "$quick" = 1 ] && echo 900 || echo 3600)

cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
out="bench/results/gpu-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
dev=(--device "$device")

# name | arguments at full size | arguments with --quick (the phantoms keep 0.8 mm in plane: 320² still holds a spleen)
benches=(
    "gzip_codecs||--shape 128 128 32 --repeats 1"
    "dicom_seg||--size 128 --slices 16 --repeats 1"
    "segmentation_overhead|${dev[*]}|${dev[*]} --shape 128 128 48 --repeats 1"
    "memory|${dev[*]}|${dev[*]} --shape 128 128 64"
    "growth|${dev[*]}|${dev[*]} --shapes 64x64x32 96x96x48 --session-shape 64x64x40 --repeats 1"
    "click_latency|${dev[*]}|${dev[*]} --clicks 3"
    "large_structure_click|${dev[*]}|${dev[*]} --clicks 2"
    "concurrency|${dev[*]}|${dev[*]} --shape 320 320 24 --segs 1 --idle-clicks 2 --clients 2 --think 0.1"
    "models_latency|${dev[*]}|${dev[*]} --shape 320 320 24 --phase-seconds 5 --tight 1"
    "training_latency|${dev[*]}|${dev[*]} --shape 320 320 24 --images 2 --clicks 2 --budget 15"
    "bundle_parity|${dev[*]}|${dev[*]} --bundles spleen_ct_segmentation"
    "hostile_inputs|${dev[*]}|${dev[*]}"
)

summary="$out/summary.txt"
{
    echo "bench/gpu.sh --device $device$([ "$quick" = 1 ] && echo ' --quick') at $(date -u '+%Y-%m-%d %H:%M:%S') UTC"
    echo "host $(hostname), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} | tee "$summary"

failures=0
run_one() {  # name, arguments...; appends one summary line
    local name="$1"; shift
    local log="$out/$name.txt" started status
    started=$(date +%s)
    echo "\$ $python $* (timeout ${timeout_s}s)" > "$log"
    PYTHONUNBUFFERED=1 timeout "$timeout_s" "$python" "$@" >> "$log" 2>&1
    status=$?
    local seconds=$(( $(date +%s) - started ))
    local verdict=ok
    [ "$status" = 0 ] || { verdict="FAIL rc=$status"; [ "$status" = 124 ] && verdict="TIMEOUT"; failures=$((failures + 1)); }
    printf '%-24s %-12s %5ss  %s\n' "$name" "$verdict" "$seconds" "$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-110)" \
        | tee -a "$summary"
}

if [ "$device" = cuda ] && { [ -z "$only" ] || [[ ",$only," == *,cuda_tests,* ]]; }; then
    run_one cuda_tests -m pytest -q -p no:cacheprovider tests/engines/test_cuda.py tests/engines/test_batching.py
fi
for entry in "${benches[@]}"; do
    IFS='|' read -r name full small <<< "$entry"
    [ -z "$only" ] || [[ ",$only," == *",$name,"* ]] || continue
    args=$([ "$quick" = 1 ] && echo "$small" || echo "$full")
    # shellcheck disable=SC2086  # the arguments are split on purpose
    run_one "$name" "bench/$name.py" $args
done
echo "results in $out ($failures failed)" | tee -a "$summary"
exit "$failures"
