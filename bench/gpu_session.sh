#!/usr/bin/env bash
# The GPU benchmarks and GPU-only checks, one stage per device call (each stays under 10 minutes).
#
# Prepare here, once (the GPU machine reaches no package index and only carries the repo):
#     bash bench/gpu_session.sh prepare
# Then, through the device tool, carrying .whl and .benchdata:
#     bash bench/gpu_session.sh extract   # bench_extract: scan preset, DFDC x16, GPU detection
#     bash bench/gpu_session.sh train     # bench_train: r2plus1d_112 and i3d_224 on real tubes
#     bash bench/gpu_session.sh scan      # bench_scan: all eight members, DFDC x40
#     bash bench/gpu_session.sh checks    # CUDA paths: AMP train step, scan fp16/bf16, 2-GPU-free DDP smoke
# Each writes its log and JSON under $OUT (the device tool brings them back), else bench/out.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?stage: prepare | extract | train | scan | checks}

if [[ $stage == prepare ]]; then
    # Packages the GPU image lacks (its list: /work/.library/device/KINDS.md), as wheels for its
    # Python 3.12, and the sample DFDC videos inside the repo (../shared does not travel).
    mkdir -p .whl .benchdata
    for spec in av==18.1.0 facenet-pytorch==2.5.3 platformdirs==4.14.8; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$spec"
    done
    cp -r ../shared/data/dfdc .benchdata/
    du -sh .whl .benchdata
    exit 0
fi

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
out=${OUT:-bench/out}
mkdir -p "$out"
export DEEPFAKE_DATA_DIR=/tmp/deepfake-data DEEPFAKE_CACHE_DIR=/tmp/deepfake-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
videos=.benchdata/dfdc

case $stage in
extract)
    python3 bench/bench_extract.py "$videos" --preset scan --device cuda --repeat 16 --json "$out/extract_scan.json" 2>&1 | tee "$out/extract.log"
    python3 bench/bench_extract.py "$videos" --preset default --device cuda --repeat 8 --json "$out/extract_default.json" 2>&1 | tee -a "$out/extract.log"
    ;;
train)
    python3 -m dfdc_cli extract "$videos" --out /tmp/bench-tubes --device cuda -q
    python3 bench/bench_train.py --index /tmp/bench-tubes --device cuda --json "$out/train.json" 2>&1 | tee "$out/train.log"
    ;;
scan)
    python3 bench/bench_scan.py --videos "$videos" --random-weights --repeat 40 --device cuda --json "$out/scan.json" 2>&1 | tee "$out/scan.log"
    ;;
checks)
    # Not timings: does every CUDA path run? (AMP bf16 and fp16 training steps with their scaler,
    # scan under both autocast dtypes, DDP over NCCL with one process.)
    python3 -m dfdc_cli extract "$videos" --out /tmp/check-tubes --device cuda -q
    for amp in bf16 fp16; do
        python3 -m dfdc_cli train --member r2plus1d_112 --index /tmp/check-tubes --init scratch --device cuda \
            --precision "$amp" --epochs 1 --batch-size 4 --workers 8 2>&1 | tail -n 3 | tee -a "$out/checks.log"
    done
    for prec in fp16 bf16; do
        python3 -m dfdc_cli scan "$videos" --device cuda --precision "$prec" --rescore --json "$out/scan_$prec.json" 2>&1 | tail -n 12 | tee -a "$out/checks.log"
    done
    torchrun --standalone --nproc-per-node 1 -m dfdc_cli train --member mc3_112 --index /tmp/check-tubes --init scratch \
        --device cuda --epochs 1 --batch-size 4 --workers 4 2>&1 | tail -n 3 | tee -a "$out/checks.log"
    ;;
*)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
