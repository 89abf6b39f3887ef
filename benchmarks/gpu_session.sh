#!/usr/bin/env bash
# One lent GPU machine, each stage within one 10-minute call (see docs/benchmarking.md). With a 15-minute lease
# (start-up included), run `first`, then `goals` on the same warm machine (it reuses first's build); `tiles` and
# `profile` only with time left. Every step has its own time limit; a benchmark cut short keeps the shapes it
# finished (its JSON is rewritten after each one, "complete": false).
#   bash benchmarks/gpu_session.sh lease        # the 15-minute lease in two calls on one warm machine: this one
#                                               # builds (sm_90) and measures the dispatch table for this card
#                                               # (CUDA plans on the 'models' shapes), then
#   bash benchmarks/gpu_session.sh main         # the main job with 'auto' on that table (and benchmark mode):
#                                               # robust_resnet_dw_small, bf16 channels_last and fp32 NCHW
#   bash benchmarks/gpu_session.sh first        # sm_90-only build, the CUDA backend's GPU tests and
#                                               # compute-sanitizer, the goal shapes timed for cuda vs PyTorch
#   bash benchmarks/gpu_session.sh goals        # the goal shapes: cuda and triton (default tiles) vs PyTorch,
#                                               # fp32 NCHW and bf16 channels_last, fwd/dgrad/wgrad/fwd+bwd
#   bash benchmarks/gpu_session.sh profile      # Nsight Compute (when on the PATH): one call per goal case
#   bash benchmarks/gpu_session.sh tiles        # every Triton autotune candidate timed alone (triton_tiles.py),
#                                               # Robust-ResNet C384 14x14 K11 and ConvNeXt 56x56 K7
#   bash benchmarks/gpu_session.sh table        # the dispatch table for this card: every plan of every backend
#                                               # and PyTorch per op on the goal shapes (fp32 NCHW, bf16
#                                               # channels_last), then benchmarks/make_dispatch_table.py
#   bash benchmarks/gpu_session.sh build        # build the extension against the machine's torch, run the GPU tests
#   bash benchmarks/gpu_session.sh kernels      # kernels.py, Robust-ResNet shapes (bf16, fp32) + plot
#   bash benchmarks/gpu_session.sh kernels-more # kernels.py, ConvNeXt and RepLKNet-like shapes
#   bash benchmarks/gpu_session.sh kernels-mma  # cuda backend, bf16 + fp16, fwd and dgrad: FMA kernels vs the
#                                               # tensor-core kernels (plans cuda:fma / cuda:mma), their tests first
#   bash benchmarks/gpu_session.sh kernels-triton  # triton backend, Robust-ResNet shapes: row-streaming kernels
#                                               # vs the direct ones (plans triton:rows / triton:direct), and the
#                                               # half-precision small-map GEMM vs rows (triton:plane / triton:rows)
#   bash benchmarks/gpu_session.sh throughput-bf16  # throughput.py, four models, bf16 channels_last, batch 128
#   bash benchmarks/gpu_session.sh throughput-fp32  # throughput.py, four models, fp32 NCHW (official), batch 128
# Results go to benchmarks/results/ and, when $OUT is set (the device tool's output folder), are copied there.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
card=$(python -c "import torch; from benchmarks.run_info import slug; print(slug(torch.cuda.get_device_name()))")
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv || true
# step SECONDS CMD...: a step that cannot overrun the call; its time and exit status go to the step log.
STEP_LOG="$RESULTS/gpu-session-steps.log"
step() {
  local limit=$1; shift
  local t0=$SECONDS rc=0
  timeout -k 10 "$limit" "$@" || rc=$?
  echo "$(date -u +%H:%M:%S) rc=$rc $((SECONDS - t0))s: $*" | tee -a "$STEP_LOG" || true
  save_results
}
STASH=build/gpu-session  # ignored by git, so it stays on a warm machine from one call to the next
save_results() {  # into the device tool's output folder after every step: a call cut off keeps what it made
  mkdir -p "$STASH" && cp "$RESULTS"/cuda-* "$STASH/" 2>/dev/null || true
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/results" && cp "$RESULTS"/cuda-* "$STEP_LOG" dwconv/dispatch_table.json "$OUT/results/" 2>/dev/null \
      || true
  fi
}
export PATH="$PATH:/usr/local/cuda/bin"  # compute-sanitizer, ncu
for tool in nvcc compute-sanitizer ncu; do
  echo "$tool: $(command -v "$tool" || echo 'not on the PATH')" | tee -a "$STEP_LOG" || true
done
goals() {  # goals BACKENDS SUFFIX SECONDS: fp32 NCHW and bf16 channels_last, the layouts the goals name
  step "$3" python benchmarks/kernels.py --shapes goals --backend "$1" --dtype fp32 --layouts nchw --no-progress \
    --json "$RESULTS/cuda-$card-kernels-goals-fp32-nchw$2.json"
  step "$3" python benchmarks/kernels.py --shapes goals --backend "$1" --dtype bf16 --layouts nhwc --no-progress \
    --json "$RESULTS/cuda-$card-kernels-goals-bf16-nhwc$2.json"
}
table_stage() {  # table_stage SECONDS SHAPES PLANS [SUFFIX]: plans beside PyTorch, fp32 NCHW and bf16 channels_last, then the table.
  # --resume: a committed file of a run cut short is continued (delete it to measure again from the start).
  # Heuristic Triton tiles: autotuning would compile every candidate of every family for every shape.
  DWCONV_TRITON_AUTOTUNE=0 step "$1" python benchmarks/kernels.py --shapes "$2" --backend "$3" --dtype fp32 \
    --layouts nchw --ops fwd,dgrad,wgrad --no-progress --resume --json "$RESULTS/cuda-$card-kernels-table-fp32-nchw${4:-}.json"
  DWCONV_TRITON_AUTOTUNE=0 step "$1" python benchmarks/kernels.py --shapes "$2" --backend "$3" --dtype bf16 \
    --layouts nhwc --ops fwd,dgrad,wgrad --no-progress --resume --json "$RESULTS/cuda-$card-kernels-table-bf16-nhwc${4:-}.json"
  step 30 python benchmarks/make_dispatch_table.py
}
throughput() {  # throughput SECONDS DTYPE LAYOUT-FLAG FILE-SUFFIX [ARGS...]: robust_resnet_dw_small with 'auto'
  local limit=$1 dtype=$2 layout=$3 suffix=$4; shift 4
  DWCONV_TRITON_AUTOTUNE=0 step "$limit" python benchmarks/throughput.py --model robust_resnet_dw_small \
    --backend auto --dtype "$dtype" "$layout" "$@" --no-progress --json "$RESULTS/cuda-$card-throughput-$suffix.json" \
    --notes "gpu_session.sh main: heuristic Triton tiles (DWCONV_TRITON_AUTOTUNE=0), as the table was measured"
}
ALL_PLANS=cuda:fma,cuda:mma,triton:rows,triton:direct,triton:plane,auto
case "${1:-}" in
  first)
    step 240 env DWCONV_CUDA_ARCHS=90 MAX_JOBS="$(nproc)" python -m pip install --no-build-isolation --no-deps -e . -q
    step 180 python -m pytest -q -m gpu tests/test_cuda_backend.py tests/test_cuda_mma.py -p no:cacheprovider
    goals cuda -cuda 75 ;;
  goals)
    DWCONV_TRITON_AUTOTUNE=0 goals cuda,triton "" 270 ;;
  table)  # every plan per op beside PyTorch in both layouts, each checked against float64 first
    table_stage 280 goals "$ALL_PLANS" ;;
  lease)
    step 240 env DWCONV_CUDA_ARCHS=90 MAX_JOBS="$(nproc)" python -m pip install --no-build-isolation --no-deps -e . -q
    step 60 python -c "import torch, dwconv; print(torch.__version__, dwconv.available_backends('cuda'))"
    # CUDA plans only: on 2026-12-04 all six plans reached 1 fp32 and 5 bf16 shapes in 150 s each, and
    # cuda:fma was the fastest plan at 17 of the 18 calls measured (docs/perf_cuda.md, "H200, 2026-12-04")
    # bf16 channels_last reached all 18 shapes in 64 s, fp32 NCHW 5 in 150 s (2026-12-04, second lease): the JSON's
    # "seconds" now says per shape and phase where the time goes
    table_stage 150 models cuda:fma,cuda:mma,auto -cuda ;;
  main)  # on the table 'lease' measured (its results come with this call's tree or stay in $STASH): 'auto' against
    # nn.Conv2d in both configurations first (about 20 s each), then benchmark mode one mode per process (it times
    # every capable plan, Triton's included, at each layer's first call: a bf16 training run took 67 s with the
    # Triton cache warm, and runs of both modes in one process were cut at 140 s on 2026-12-04); then the GPU
    # tests and the per-call overhead on the card (never measured on a GPU yet)
    cp -n "$STASH"/cuda-* "$RESULTS/" 2>/dev/null || true
    step 30 python benchmarks/make_dispatch_table.py
    throughput 60 fp32 --no-channels-last fp32-nchw --no-benchmark-mode
    throughput 60 bf16 --channels-last bf16-channels-last --no-benchmark-mode
    throughput 60 bf16 --channels-last bf16-channels-last-benchmark-mode-inference --mode inference
    throughput 120 bf16 --channels-last bf16-channels-last-benchmark-mode-train --mode train
    throughput 60 fp32 --no-channels-last fp32-nchw-benchmark-mode-inference --mode inference
    step 60 python -m pytest -q -x -m gpu tests/test_cuda_backend.py tests/test_native_entry.py tests/test_native_training.py tests/test_remembered_calls.py -p no:cacheprovider  # with the time left
    step 60 python benchmarks/overhead.py --device cuda --json "$RESULTS/cuda-$card-overhead.json"
    throughput 120 fp32 --no-channels-last fp32-nchw-benchmark-mode-train --mode train ;;
  tiles)
    step 280 python benchmarks/triton_tiles.py --only "C384 14x14 K11" --json "$RESULTS/cuda-$card-triton-tiles-c384.json"
    step 280 python benchmarks/triton_tiles.py --only "56x56" --json "$RESULTS/cuda-$card-triton-tiles-56.json" ;;
  profile)
    if command -v ncu >/dev/null; then
      for backend in cuda triton torch; do
        DWCONV_TRITON_AUTOTUNE=0 step 170 ncu --profile-from-start off --section SpeedOfLight --section Occupancy \
          --section LaunchStats --section WarpStateStats --csv --log-file "$RESULTS/cuda-$card-ncu-$backend.csv" \
          python benchmarks/profile_ops.py --backend "$backend"
      done
    else
      echo "ncu not on the PATH" | tee -a "$STEP_LOG"
    fi ;;
  build)
    python -m pip install --no-build-isolation --no-deps -e . -q
    python -m pytest -q -m gpu -x
    python -m pytest -q -x tests/test_parity.py -k "cuda" ;;
  kernels)
    python benchmarks/kernels.py --shapes robust_resnet --no-progress \
      --json "$RESULTS/cuda-$card-kernels-robust-resnet.json" --plot "$RESULTS/cuda-$card-kernels-robust-resnet.png" ;;
  kernels-more)
    python benchmarks/kernels.py --shapes convnext --no-progress --json "$RESULTS/cuda-$card-kernels-convnext.json"
    python benchmarks/kernels.py --shapes replknet --no-progress \
      --json "$RESULTS/cuda-$card-kernels-replknet.json" --plot "$RESULTS/cuda-$card-kernels-replknet.png" ;;
  kernels-mma)  # both plans in one run: interleaved, side by side
    python -m pytest -q -x tests/test_cuda_mma.py -m gpu
    python benchmarks/kernels.py --shapes robust_resnet --backend cuda:fma,cuda:mma --dtype bf16,fp16 --ops fwd,dgrad \
      --no-progress --json "$RESULTS/cuda-$card-kernels-robust-resnet-mma.json" ;;
  kernels-triton)  # each kernel family as a plan, side by side (an op a family cannot run is reported)
    python -m pytest -q -x tests/test_triton.py tests/test_triton_plans.py
    python benchmarks/kernels.py --shapes robust_resnet --backend triton:rows,triton:direct --dtype bf16,fp32 \
      --no-progress --json "$RESULTS/cuda-$card-kernels-robust-resnet-triton-rows-direct.json"
    python benchmarks/kernels.py --shapes robust_resnet --backend triton:plane,triton:rows --dtype bf16 \
      --ops fwd,dgrad --no-progress --json "$RESULTS/cuda-$card-kernels-robust-resnet-triton-plane-rows.json" ;;
  throughput-bf16)
    python benchmarks/throughput.py --dtype bf16 --channels-last --no-progress \
      --json "$RESULTS/cuda-$card-throughput-bf16-channels-last.json" ;;
  throughput-fp32)
    python benchmarks/throughput.py --dtype fp32 --no-channels-last --no-progress \
      --json "$RESULTS/cuda-$card-throughput-fp32-nchw.json" ;;
  *)
    echo "usage: $0 lease|main|first|goals|table|tiles|profile|build|kernels|kernels-more|kernels-mma|kernels-triton|throughput-bf16|throughput-fp32" >&2
    exit 2 ;;
esac
save_results
