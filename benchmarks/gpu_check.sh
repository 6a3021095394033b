#!/usr/bin/env bash
# One-shot check on a CUDA machine, all within about 8 minutes, everything written into one folder.
#
#   benchmarks/gpu_check.sh [OUTPUT_FOLDER]            # default ./gpu_check_<UTC time>
#   benchmarks/gpu_check.sh --dry-run [OUTPUT_FOLDER]  # any machine: check the tools and print the plan
#
# Needs the package installed with its test extras (pip install ".[test]") and a CUDA GPU; run it from the
# repository root or anywhere (it finds its own folder). Steps, each with its own time limit, each one's output
# in OUTPUT_FOLDER/<step>.log, a summary line per step in OUTPUT_FOLDER/summary.txt:
#   1. machine: nvidia-smi, torch/CUDA/cuDNN versions                                          (~5 s)
#   2. benchmark_command: a synthetic dataset (nnunet_blob.synthetic.make_dataset, 128^3), the real
#      nnUNetv2_plan_and_preprocess (nnU-Net's default plans), then `nnunet_blob benchmark` of stock and
#      nnUNetTrainerBlobDice with -device cuda, 3 epochs of 20 iterations; its JSON in OUTPUT_FOLDER  (limit 210 s)
#   3. cuda_tests: the test suite's CUDA tests (skipped without CUDA; list: grep -l cuda.is_available tests/)
#                                                                                              (limit 120 s)
#   4. bench_gpu: benchmarks/bench_gpu.py --quick --trainers nnUNetTrainerBlobDice, the lab benchmark
#      (synthetic 1-1000 instances per patch, stock nnUNetTrainer always measured), in the time left of the 8
#      minutes (at least 90 s); with less than 270 s left only the densities 1 and 1000. It prints each
#      density's table as soon as it is measured, so a cut-off run still reports.
# The tables of steps 2 and 4 are copied to the end of summary.txt.
# Variables: GPU_CHECK_COMPILE (nnUNet_compile for step 2, default f: torch.compile costs about a minute per
# run, 6 runs; set t to time what nnU-Net does by default), GPU_CHECK_PROCESSES (default 8).
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
out="${1:-gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}"
python="${PYTHON:-python}"
processes="${GPU_CHECK_PROCESSES:-8}"
compile="${GPU_CHECK_COMPILE:-f}"
start=$(date +%s)
# this Python's tools first (a virtual environment need not be activated)
PATH="$(dirname "$(command -v "$python")"):$PATH"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$out/nnunet"
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

# a step: name, time limit (s), command...; its output to $out/<name>.log, its exit code and seconds to summary
step() {
    local name="$1" limit="$2"; shift 2
    if [ "$dry_run" = 1 ]; then say "would run $name (limit ${limit}s): $*"; return 0; fi
    say "[$(( $(date +%s) - start ))s] $name (limit ${limit}s, log $out/$name.log)"
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=20 "$limit" bash -c '"$@"' "$name" "$@" > "$out/$name.log" 2>&1
    local code=$?
    local verdict="ok"
    [ "$code" = 0 ] || verdict="FAILED (exit $code$([ "$code" = 124 ] && echo ', time limit'))"
    say "    $name: $verdict in $(( $(date +%s) - t0 )) s"
    return 0
}

# the tools this check needs; a dry run stops after this
missing=0
for tool in nnunet_blob nnUNetv2_plan_and_preprocess nnUNetv2_train timeout; do
    command -v "$tool" > /dev/null || { say "missing: $tool (install the package: pip install \".[test]\")"; missing=1; }
done
nnunet_blob benchmark --help > /dev/null 2>&1 || { say "missing: the nnunet_blob benchmark command"; missing=1; }
"$python" -c "import nnunet_blob, nnunetv2, pytest" 2> /dev/null || { say "missing: python packages (pip install \".[test]\")"; missing=1; }
[ -f "$repo/benchmarks/bench_gpu.py" ] || { say "missing: $repo/benchmarks/bench_gpu.py"; missing=1; }
cuda_tests=$(cd "$repo" && grep -l "cuda.is_available" tests/test_*.py 2> /dev/null | tr '\n' ' ')
say "CUDA tests: ${cuda_tests:-none}"
if [ "$missing" = 1 ]; then say "gpu_check: missing tools, nothing run"; exit 2; fi
if [ "$dry_run" = 0 ] && ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "gpu_check: no CUDA device visible to torch; nothing run (--dry-run checks the tools only)"; exit 2
fi

export nnUNet_raw="$work/raw" nnUNet_preprocessed="$work/preprocessed" nnUNet_results="$work/results"
export nnUNet_def_n_proc="$processes" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-$processes}" PYTHONUNBUFFERED=1

machine() {
    nvidia-smi || true
    "$python" - << 'EOF'
import platform, torch
from importlib.metadata import version
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"GPU {torch.cuda.get_device_name() if torch.cuda.is_available() else None}, nnunetv2 {version('nnunetv2')}, "
      f"nnunet-blob {version('nnunet-blob')}, Python {platform.python_version()}")
EOF
}

benchmark_command() {
    "$python" -c "from nnunet_blob.synthetic import make_dataset; make_dataset('$nnUNet_raw', 988, 'GPUCheck', \
num_train=6, shape=(128, 128, 128), small_objects=(20, 40))" || return 1
    nnUNetv2_plan_and_preprocess -d 988 -c 3d_fullres -np "$processes" -npfp "$processes" || return 1
    nnUNet_compile="$compile" nnunet_blob benchmark -d 988 -c 3d_fullres -tr nnUNetTrainerBlobDice -device cuda \
        --epochs 3 --iterations 20 -o "$out/benchmark_command.json"
}

cuda_tests() {
    if [ -z "$cuda_tests" ]; then echo "no CUDA tests in the suite"; return 0; fi
    (cd "$repo" && "$python" -m pytest -q -rs -p no:cacheprovider $cuda_tests -k cuda)
}

export python processes compile out repo cuda_tests
export -f machine benchmark_command cuda_tests
step machine 30 machine
step benchmark_command 210 benchmark_command
step cuda_tests 120 cuda_tests
left=$(( 480 - ($(date +%s) - start) ))
limit=$(( left > 90 ? left : 90 ))
densities=""
[ "$limit" -ge 270 ] || densities="--densities 1 1000"
step bench_gpu "$limit" "$python" "$repo/benchmarks/bench_gpu.py" --quick --processes "$processes" \
    --trainers nnUNetTrainerBlobDice $densities
if [ "$dry_run" = 0 ]; then
    for name in benchmark_command bench_gpu; do
        { echo; echo "## $name"; grep -h -e "^|" -e "^###" "$out/$name.log"; } >> "$summary" 2> /dev/null
    done
fi
say "gpu_check: done in $(( $(date +%s) - start )) s; everything in $out"
