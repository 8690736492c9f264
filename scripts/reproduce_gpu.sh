#!/usr/bin/env bash
# The paper's CIFAR-10 table at full scale (200 epochs), on one GPU, in parts
# that each fit in about 9 minutes of one H100 or H200.
#
#   bash scripts/reproduce_gpu.sh PART OUT_DIR
#
# One run of the paper's recipe took 9.0 min on an H200 (2.0 s per epoch,
# 45 s start-up); the parts below run what shares a program as one sweep
# (`config.sweep`) and the rest as concurrent processes. In priority order:
#   1      normal, bn, mobn, wn_mobn at lr 1e-3 (wn at 1e-3: shared/runs)
#   2      wn at lr 3e-4, 3e-3, 1e-2 and a second seed at 1e-3 (one sweep)
#   3      wn at lr 1e-3 with full float32 convs (matmul_precision=highest),
#          and with ZCA regularisation 1e-3 and 1e-2
#   4      wn at lr 1e-3 on JPEG re-encodings of the data (quality 50, 90)
#   5..8   the other rows' learning rates (normal, bn, mobn, wn_mobn at
#          3e-4, 3e-3, 1e-2), one parameterization per part
#   bench  folded vs unfolded eval time, sweep throughput against members
#          (fp32, bf16) at full width, and one member against PyTorch (eager
#          and torch.compile max-autotune)
# Every training process runs under `timeout $BUDGET_S` (default 500 s), so
# a part ends in time; a run stopped early keeps its records up to its last
# epoch (its metrics.jsonl says how far it got).
#
# Records (config.json + metrics.jsonl of every run, no checkpoints) are
# packed into OUT_DIR/records_PART.tgz every 30 s and at the end, so they
# survive a kill; the logs into OUT_DIR/logs_PART.tgz.
#
# Inputs (environment):
#   DATA_DIR      the extracted image folder (train/ and test/ class folders);
#                 default: DATA_TARBALL extracted under /tmp/wn_jax_data
#   DATA_TARBALL  default .data/cifar10-jpeg.tar.gz
#   BUDGET_S      seconds each training process may run (default 500)
#   EXTRA_ARGS    more --config.key=value overrides for every run (the CPU
#                 smoke test shrinks the network and the schedule with it)
# A folder .whl/ of wheels (e.g. ml_collections, absent from GPU images) is
# installed first if present.
set -euo pipefail

part=${1:?usage: reproduce_gpu.sh PART OUT_DIR}
out=${2:?usage: reproduce_gpu.sh PART OUT_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
mkdir -p "$out"
budget=${BUDGET_S:-500}
extra=${EXTRA_ARGS:-}
work=${WORK_DIR:-/tmp/wn_jax_runs}/part_$part
logs=$work/logs
mkdir -p "$work" "$logs"
export PYTHONUNBUFFERED=1
export WN_JAX_CACHE_DIR=${WN_JAX_CACHE_DIR:-/tmp/wn_jax_cache}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/wn_jax_site .whl/*.whl
  export PYTHONPATH=/tmp/wn_jax_site:$repo
else
  export PYTHONPATH=$repo
fi

if [ -z "${DATA_DIR:-}" ]; then
  mkdir -p /tmp/wn_jax_data
  [ -d /tmp/wn_jax_data/cifar10-jpeg ] || \
    tar xzf "${DATA_TARBALL:-.data/cifar10-jpeg.tar.gz}" -C /tmp/wn_jax_data
  DATA_DIR=/tmp/wn_jax_data/cifar10-jpeg
fi

pack() {  # Records and logs into $out, atomically (a kill mid-write keeps the old pack).
  (cd "$work" && find . -name config.json -o -name metrics.jsonl -o -name train.log \
     | grep -v /checkpoints/ | tar czf "$out/.records_$part.tgz" -T - 2>/dev/null) \
    && mv "$out/.records_$part.tgz" "$out/records_$part.tgz"
  tar czf "$out/.logs_$part.tgz" -C "$work" logs 2>/dev/null \
    && mv "$out/.logs_$part.tgz" "$out/logs_$part.tgz"
}
(while sleep 30; do pack || true; done) &
packer=$!
trap 'kill $packer 2>/dev/null || true; pack || true' EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  > "$logs/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$logs/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())" > "$logs/versions.txt" 2>&1

# Load, decode and whiten the data once; the runs then read the data cache.
warm_cache() {
  python3 -c "import sys
from configs import cifar
from wn_jax import input_pipeline
data = cifar.get_config().data
data.source, data.folder = 'folder', sys.argv[1]
print(input_pipeline.load_whitened(data).report)" "$1" >> "$logs/data_cache.log" 2>&1
}
warm_cache "$DATA_DIR"

# train NAME VARIANT [--config.key=value ...]: one process, in the background.
train() {
  local name=$1 variant=$2
  shift 2
  # Processes sharing the GPU: each gets a fixed slice of its memory.
  XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.2} timeout "$budget" \
    python3 train.py --config "configs/cifar.py:$variant" --workdir "$work/$name" \
      --config.data.source=folder --config.data.folder="$DATA_DIR" \
      --config.checkpoint_every_epochs=10 "$@" $extra \
      > "$logs/$name.log" 2>&1 &
}

case $part in
  1)
    for p in normal bn mobn wn_mobn; do train "${p}_lr0.001_s0" "$p"; done ;;
  2)
    MEM_FRACTION=0.8 train wn_sweep_lr_seed wn \
      --config.sweep.learning_rate='(0.0003, 0.003, 0.01, 0.001)' \
      --config.sweep.seed='(0, 0, 0, 1)' ;;
  3)
    train wn_lr0.001_s0_precision_highest wn --config.matmul_precision=highest
    train wn_lr0.001_s0_zca1e-3 wn --config.data.zca_regularization=0.001
    train wn_lr0.001_s0_zca1e-2 wn --config.data.zca_regularization=0.01 ;;
  4)
    for q in 50 90; do
      [ -d "/tmp/wn_jax_data/jpeg_q$q" ] || python3 -m wn_jax.reencode "$DATA_DIR" \
        "/tmp/wn_jax_data/jpeg_q$q" --quality "$q" --subsampling 4:2:0 \
        > "$logs/reencode_q$q.log" 2>&1
      warm_cache "/tmp/wn_jax_data/jpeg_q$q"
    done
    for q in 50 90; do
      DATA_DIR=/tmp/wn_jax_data/jpeg_q$q train "wn_lr0.001_s0_jpeg_q$q" wn
    done ;;
  5|6|7|8)
    p=$(echo normal bn mobn wn_mobn | cut -d' ' -f$((part - 4)))
    MEM_FRACTION=0.8 train "${p}_sweep_lr" "$p" \
      --config.sweep.learning_rate='(0.0003, 0.003, 0.01)' ;;
  bench)
    # Eval time of the folded (wn_jax.fold) vs the unfolded network.
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout "$budget" \
      python3 benchmarks/fold_eval_time.py --width 96 --batch 500 --reps 50 \
        > "$logs/fold_eval_time.log" 2>&1 || true
    for dtype in float32 bfloat16; do
      XLA_PYTHON_CLIENT_MEM_FRACTION=0.8 timeout "$budget" \
        python3 benchmarks/sweep_scaling.py --members 1,2,4,8,16 --dtype "$dtype" \
          --member-loop vmap --reps 20 > "$logs/sweep_scaling_$dtype.log" 2>&1 || true
    done
    # One member against PyTorch eager and torch.compile (max-autotune, TF32).
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout "$budget" \
      python3 benchmarks/step_time.py --parameterizations normal,wn --reps 50 \
        --torch-compile max-autotune > "$logs/step_time_torch.log" 2>&1 || true ;;
  *)
    echo "unknown part '$part': 1..8 or bench" >&2; exit 2 ;;
esac
status=0
wait_jobs=$(jobs -p | grep -v "^$packer\$" || true)
for job in $wait_jobs; do wait "$job" || status=$?; done
echo "part $part finished with status $status" | tee -a "$logs/status.txt"
exit "$status"
