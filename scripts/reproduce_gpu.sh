#!/usr/bin/env bash
# Full-scale runs of the paper's CIFAR-10 table (200 epochs) on one GPU,
# named, so that a time-boxed GPU session runs exactly what finishes in it.
#
#   bash scripts/reproduce_gpu.sh OUT_DIR RUN [RUN ...]
#
# RUN names a run as the records do:
#   <parameterization>_lr<lr>_s<seed>[_<change>]
#     parameterization  normal | bn | mobn | wn | wn_mobn
#     change            precision_highest   full float32 convs and matmuls
#                       zca<reg>            ZCA regularisation, e.g. zca1e-2
#                       jpeg_q<Q>           the data re-encoded as JPEG at
#                                           quality Q (4:2:0), e.g. jpeg_q90
#   e.g. wn_mobn_lr0.001_s0, wn_lr0.001_s0_jpeg_q90, normal_lr0.003_s1;
# or `bench`: folded vs unfolded eval time, sweep throughput against
# members (fp32, bf16) at full width, and one member against PyTorch (eager
# and torch.compile max-autotune).
#
# Time: one run alone took 9.0 min on an H200 (2.0 s per epoch, 45 s
# start-up), so ONE run fits a 10-minute slot. The runs named together
# train side by side as separate processes; three side by side took 3.8 s
# per epoch each (1.6x the throughput, but 13 minutes for 200 epochs), so
# name several only where that much time is available (BUDGET_S). Every
# training process runs under `timeout $BUDGET_S` (default 500 s); a run
# stopped early keeps its records up to its last epoch (its metrics.jsonl
# says how far it got, and the status line says it was stopped).
# A jpeg_q<Q> run first re-encodes the images and fills the data cache for
# them, before its budget starts. `bench` shares one BUDGET_S over its steps.
# The whole protocol without a time limit: `python -m wn_jax.experiments`.
#
# Records (config.json + metrics.jsonl of every run, no checkpoints) are
# packed into OUT_DIR/records_LABEL.tgz every 30 s and at the end, so they
# survive a kill; the logs into OUT_DIR/logs_LABEL.tgz. LABEL is the run's
# name, or the first name plus the number of others.
#
# Inputs (environment):
#   DATA_DIR      the extracted image folder (train/ and test/ class folders);
#                 default: DATA_TARBALL extracted under /tmp/wn_jax_data
#   DATA_TARBALL  default .data/cifar10-jpeg.tar.gz
#   BUDGET_S      seconds each process may run (default 500)
#   EXTRA_ARGS    more --config.key=value overrides for every run (the CPU
#                 smoke test shrinks the network and the schedule with it)
# A folder .whl/ of wheels (e.g. ml_collections, absent from GPU images) is
# installed first if present.
set -euo pipefail

usage="usage: reproduce_gpu.sh OUT_DIR RUN [RUN ...] (RUN: <parameterization>_lr<lr>_s<seed>[_<change>] or bench)"
out=${1:?$usage}
shift
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
runs=("$@")
run_pattern='^(normal|bn|mobn|wn|wn_mobn)_lr([0-9]+(\.[0-9]+)?(e-?[0-9]+)?)_s([0-9]+)(_(precision_highest|zca[0-9]+(\.[0-9]+)?(e-?[0-9]+)?|jpeg_q[0-9]+))?$'
# Check every name before anything starts.
for run in "${runs[@]}"; do
  if [ "$run" = bench ]; then
    [ ${#runs[@]} -eq 1 ] || { echo "bench runs alone, not with training runs" >&2; exit 2; }
  elif ! [[ $run =~ $run_pattern ]]; then
    echo "unknown run '$run'; $usage" >&2; exit 2
  fi
done
label=${runs[0]}
[ ${#runs[@]} -eq 1 ] || label="${runs[0]}_and_$((${#runs[@]} - 1))_more"
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
mkdir -p "$out"
budget=${BUDGET_S:-500}
extra=${EXTRA_ARGS:-}
work=${WORK_DIR:-/tmp/wn_jax_runs}/$label
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
     | grep -v /checkpoints/ | tar czf "$out/.records_$label.tgz" -T - 2>/dev/null) \
    && mv "$out/.records_$label.tgz" "$out/records_$label.tgz"
  tar czf "$out/.logs_$label.tgz" -C "$work" logs 2>/dev/null \
    && mv "$out/.logs_$label.tgz" "$out/logs_$label.tgz"
}
(while sleep 30; do pack || true; done) &
packer=$!
trap 'kill $packer 2>/dev/null || true; pack || true' EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  > "$logs/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$logs/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())" > "$logs/versions.txt" 2>&1

# Load, decode and whiten a data folder once (the first run that needs it);
# the runs then read the data cache.
declare -A warmed=()
warm_cache() {
  [ -z "${warmed[$1]:-}" ] || return 0
  warmed[$1]=1
  python3 -c "import sys
from configs import cifar
from wn_jax.data import cache
data = cifar.get_config().data
data.source, data.folder = 'folder', sys.argv[1]
print(cache.load_whitened(data).report)" "$1" >> "$logs/data_cache.log" 2>&1
}

# train NAME: one process, in the background, with the overrides its name
# spells out. Processes sharing the GPU get equal slices of its memory.
train() {
  local name=$1 data_dir=$DATA_DIR
  [[ $name =~ $run_pattern ]]
  local variant=${BASH_REMATCH[1]} lr=${BASH_REMATCH[2]} seed=${BASH_REMATCH[5]}
  local change=${BASH_REMATCH[7]}
  local args=(--config.optimizer.learning_rate="$lr" --config.seed="$seed")
  case $change in
    "") ;;
    precision_highest) args+=(--config.matmul_precision=highest) ;;
    zca*) args+=(--config.data.zca_regularization="${change#zca}") ;;
    jpeg_q*)
      local q=${change#jpeg_q}
      data_dir=/tmp/wn_jax_data/jpeg_q$q
      [ -d "$data_dir" ] || python3 -m wn_jax.reencode "$DATA_DIR" "$data_dir" \
        --quality "$q" --subsampling 4:2:0 > "$logs/reencode_q$q.log" 2>&1 ;;
  esac
  warm_cache "$data_dir"
  XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction timeout "$budget" \
    python3 train.py --config "configs/cifar.py:$variant" --workdir "$work/$name" \
      --config.data.source=folder --config.data.folder="$data_dir" \
      --config.checkpoint_every_epochs=10 "${args[@]}" $extra \
      > "$logs/$name.log" 2>&1 &
  pids+=($!)
}

# Seconds left of the bench's one budget (at least 1).
bench_end=$((SECONDS + budget))
bench_left() { local left=$((bench_end - SECONDS)); echo $((left > 1 ? left : 1)); }

pids=()
if [ "${runs[0]}" = bench ]; then
  # The steps share BUDGET_S. Eval time of the folded (wn_jax.fold) vs the
  # unfolded network.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout "$(bench_left)" \
    python3 benchmarks/fold_eval_time.py --width 96 --batch 500 --reps 50 \
      > "$logs/fold_eval_time.log" 2>&1 || true
  for dtype in float32 bfloat16; do
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.8 timeout "$(bench_left)" \
      python3 benchmarks/sweep_scaling.py --members 1,2,4,8,16 --dtype "$dtype" \
        --member-loop vmap --reps 20 > "$logs/sweep_scaling_$dtype.log" 2>&1 || true
  done
  # One member against PyTorch eager and torch.compile (max-autotune, TF32).
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout "$(bench_left)" \
    python3 benchmarks/step_time.py --parameterizations normal,wn --reps 50 \
      --torch-compile max-autotune > "$logs/step_time_torch.log" 2>&1 || true
else
  mem_fraction=$(python3 -c "print(round(0.9 / ${#runs[@]}, 3))")
  for run in "${runs[@]}"; do train "$run"; done
fi
status=0
for i in "${!pids[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  case $rc in
    0) what="finished" ;;
    124) what="stopped at BUDGET_S=${budget} s (records up to its last epoch)" ;;
    *) what="failed with status $rc (see logs/${runs[$i]}.log)" ;;
  esac
  echo "${runs[$i]}: $what" | tee -a "$logs/status.txt"
  [ "$rc" -eq 0 ] || status=$rc
done
exit "$status"
