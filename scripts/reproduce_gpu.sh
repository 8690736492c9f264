#!/usr/bin/env bash
# Full-scale runs of the paper's CIFAR-10 table (200 epochs) on one GPU, on
# the original CIFAR-10 (the authors' input), named, so that a time-boxed
# GPU job runs exactly what finishes in it.
#
#   bash scripts/reproduce_gpu.sh stage PART     # once per part, see below
#   bash scripts/reproduce_gpu.sh OUT_DIR RUN [RUN ...]
#
# RUN names a run as the records do:
#   <parameterization>_lr<lr>_s<seed>[_<change>]
#     parameterization  normal | bn | mobn | wn | wn_mobn, or normal_direct |
#                       mobn_direct (the direct reading of normal, docs/VAE.md)
#     change            precision_highest   full float32 convs and matmuls
#                       zca<reg>            ZCA regularisation, e.g. zca1e-2
#                       jpegcopy            the lossy JPEG copy of CIFAR-10
#                                           (quality 75, 4:2:0) instead of
#                                           the original
#                       jpeg_q<Q>           the original re-encoded as JPEG at
#                                           quality Q (4:2:0), e.g. jpeg_q90
#   e.g. wn_lr0.001_s0, wn_mobn_lr0.001_s0, wn_lr0.001_s0_jpegcopy;
# or the section 5.2 VAE on MNIST (configs/mnist_vae.py, 300 epochs):
#   vae_mnist_<parameterization>_seeds<N>
#     seeds 0..N-1 as ONE sweep program, vmapped (Figure 3: normal vs wn,
#     its error bars over seeds), e.g. vae_mnist_wn_seeds5,
#     vae_mnist_normal_seeds5; normal_direct and mobn_direct are the direct
#     reading of normal (w trained itself after the data init, docs/VAE.md);
# or DRAW on MNIST (section 5.3, configs/mnist_draw.py, 100 epochs):
#   draw_mnist_<normal|wn|wn_g_norm>_seeds<N>, e.g. draw_mnist_wn_seeds2
#     (Figure 4; wn_g_norm: g starting at ||v||, docs/DRAW.md);
#     normal and wn are two programs (their parameter trees differ), run
#     side by side when named together;
# or DQN on MinAtar Space Invaders (section 5.4's stand-in,
# configs/minatar_dqn.py, 80 epochs = 2M env steps):
#   dqn_minatar_<normal|wn|bn>[_lr<lr>]_seeds<N>, e.g. dqn_minatar_wn_seeds5,
#     dqn_minatar_normal_seeds5, dqn_minatar_normal_lr3e-4_seeds5 (the lr
#     defaults to the paper's pick: normal and bn 1e-4, wn 3e-4);
# or DQN on an Atari game (section 5.4 at the paper's scale,
# configs/atari_dqn.py: 200 epochs of 250,000 agent steps, each followed by
# a 125,000-step test epoch; ale-py from the rl extra):
#   dqn_atari_<game>_<normal|wn|bn>[_lr<lr>]_s<seed>[_short_epochs], game
#     space_invaders | breakout | enduro | seaquest, e.g.
#     dqn_atari_space_invaders_wn_s0 (Figure 5) and
#     dqn_atari_space_invaders_normal_s0; one seed a run, as the paper ran
#     them; checkpointed every epoch, so a rerun with the same WORK_DIR
#     resumes after the last whole epoch. _short_epochs: epochs of 50,000
#     agent steps (the same training, tested 5x as often on 25,000-step
#     tests), so that a job with a time limit ends on a checkpoint;
# or `bench`: folded vs unfolded eval time, sweep throughput against
# members (fp32, bf16) at full width, and one member against PyTorch (eager
# and torch.compile max-autotune).
#
# The original data (cifar-10-python.tar.xz, 130 MB) comes in parts of at
# most 32 MiB (cifar-10-python.tar.xz.part0 ... part3) where a machine takes
# its input only in pieces. `stage PART` copies one part into STAGE_DIR
# (default /tmp/wn_jax_stage, outside the work tree); a later training call
# joins the staged parts in the order of their numbers, checks the joined
# archive's sha256 against CIFAR10_SHA256, extracts it, fills the data cache
# and trains. docs/REPRODUCTION.md gives the exact sequence of calls.
#
# Time: one run alone took 9.0 min on an H200 (2.0 s per epoch, 45 s
# start-up), so ONE run fits a 10-minute slot. The runs named together
# train side by side as separate processes; three side by side took 3.8 s
# per epoch each (1.6x the throughput, but 13 minutes for 200 epochs), so
# name several only where that much time is available (BUDGET_S). Every
# training process runs under `timeout $BUDGET_S` (default 500 s); a run
# stopped early keeps its records up to its last epoch (its metrics.jsonl
# says how far it got, and the status line says it was stopped).
# Preparing the data (join, check, extract, re-encode, whiten) happens
# before a run's budget starts. `bench` shares one BUDGET_S over its steps.
# The whole protocol without a time limit: `python -m wn_jax.study.experiments`.
#
# Records (config.json + metrics.jsonl of every run, no checkpoints) are
# packed into OUT_DIR/records_LABEL.tgz every 30 s and at the end, so they
# survive a kill; the logs into OUT_DIR/logs_LABEL.tgz. LABEL is the run's
# name, or the first name plus the number of others.
#
# Inputs (environment):
#   CIFAR10_DIR    the original data: a cifar-10-batches-py directory or the
#                  joined .tar.xz / .tar.gz. Default: the parts in STAGE_DIR,
#                  else .data/cifar-10-python.tar.xz.part*, else
#                  .data/cifar-10-python.tar.xz, joined, checked and
#                  extracted under DATA_ROOT
#   STAGE_DIR      where `stage` puts the parts (default /tmp/wn_jax_stage)
#   CIFAR10_SHA256 sha256 of the joined archive (default: the original's)
#   DATA_ROOT      where data is extracted (default /tmp/wn_jax_data)
#   JPEG_DIR       the extracted JPEG copy (train/ and test/ class folders),
#                  for `jpegcopy` runs; default: JPEG_TARBALL extracted
#                  under DATA_ROOT
#   JPEG_TARBALL   default .data/cifar10-jpeg.tar.gz
#   BUDGET_S       seconds each process may run (default 500)
#   EXTRA_ARGS     more --config.key=value overrides for every run named in
#                  the call (the CPU smoke tests shrink the network and the
#                  schedule with it; they must suit every run named)
#   MNIST_DIR      the four official MNIST files (.gz or not) for the vae_mnist
#                  and draw_mnist runs; default .data/mnist (11 MB: they
#                  travel in one call)
#
# The VAE's 300 epochs may not fit one 10-minute slot: a vae_mnist run
# checkpoints every epoch and resumes from WORK_DIR/<run> when called again
# with the same WORK_DIR (which must then persist between calls); its
# records say how far it got. Cost per epoch (600
# steps of batch 100 per member): measured on the 2-core CPU here, 0.42 s a
# step for one member; not yet measured on a GPU.
# A folder .whl/ of wheels (e.g. ml_collections, absent from GPU images) is
# installed first if present.
set -euo pipefail

usage="usage: reproduce_gpu.sh OUT_DIR RUN [RUN ...] (RUN: <parameterization>_lr<lr>_s<seed>[_<change>], vae_mnist_<parameterization>[_direct]_seeds<N>, draw_mnist_<normal|wn|wn_g_norm>_seeds<N>, dqn_minatar_<normal|wn|bn>[_lr<lr>]_seeds<N>, dqn_atari_<game>_<normal|wn|bn>[_lr<lr>]_s<seed>[_short_epochs] or bench) | reproduce_gpu.sh stage PART"
stage_dir=${STAGE_DIR:-/tmp/wn_jax_stage}
data_root=${DATA_ROOT:-/tmp/wn_jax_data}
# sha256 of the original cifar-10-python.tar.xz, joined from its parts.
expected_sha256=${CIFAR10_SHA256:-7b0894aed0027c64d21d767934068cef9665fa659e70098226d908147f8dfc89}

if [ "${1:-}" = stage ]; then
  part=${2:?usage: reproduce_gpu.sh stage PART (e.g. .data/cifar-10-python.tar.xz.part0)}
  [[ $(basename "$part") =~ \.part[0-9]+$ ]] || \
    { echo "stage: '$part' is not named <archive>.part<N>" >&2; exit 2; }
  [ -f "$part" ] || { echo "stage: no file '$part'" >&2; exit 2; }
  mkdir -p "$stage_dir"
  cp "$part" "$stage_dir/.$(basename "$part").tmp"
  mv "$stage_dir/.$(basename "$part").tmp" "$stage_dir/$(basename "$part")"
  echo "staged $(basename "$part") in $stage_dir; now there:"
  (cd "$stage_dir" && ls -l -- *.part* | awk '{print "  " $NF ": " $5 " bytes"}')
  exit 0
fi

out=${1:?$usage}
shift
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
runs=("$@")
vae_pattern='^vae_mnist_(normal|normal_direct|bn|mobn|mobn_direct|wn|wn_mobn)_seeds([1-9][0-9]*)$'
draw_pattern='^draw_mnist_(normal|wn|wn_g_norm)_seeds([1-9][0-9]*)$'
dqn_pattern='^dqn_minatar_(normal|wn|bn)(_lr([0-9]+(\.[0-9]+)?(e-?[0-9]+)?))?_seeds([1-9][0-9]*)$'
atari_pattern='^dqn_atari_(space_invaders|breakout|enduro|seaquest)_(normal|wn|bn)(_lr([0-9]+(\.[0-9]+)?(e-?[0-9]+)?))?_s([0-9]+)(_short_epochs)?$'
run_pattern='^(normal|normal_direct|bn|mobn|mobn_direct|wn|wn_mobn)_lr([0-9]+(\.[0-9]+)?(e-?[0-9]+)?)_s([0-9]+)(_(precision_highest|zca[0-9]+(\.[0-9]+)?(e-?[0-9]+)?|jpegcopy|jpeg_q[0-9]+))?$'
# Check every name before anything starts.
for run in "${runs[@]}"; do
  if [ "$run" = bench ]; then
    [ ${#runs[@]} -eq 1 ] || { echo "bench runs alone, not with training runs" >&2; exit 2; }
  elif ! [[ $run =~ $run_pattern || $run =~ $vae_pattern || $run =~ $draw_pattern \
             || $run =~ $dqn_pattern || $run =~ $atari_pattern ]]; then
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

# The original CIFAR-10 as a cifar-10-batches-py directory: CIFAR10_DIR, or
# the parts (staged, else in .data/) or the archive, joined, checked against
# the sha256 and extracted once under DATA_ROOT.
original_dir() {
  if [ -n "${CIFAR10_DIR:-}" ]; then echo "$CIFAR10_DIR"; return; fi
  local extracted=$data_root/cifar-10-batches-py
  if [ ! -f "$extracted/.complete" ]; then
    local parts=() archive=$data_root/cifar-10-python.tar.xz
    mapfile -t parts < <(ls "$stage_dir"/*.part[0-9]* 2>/dev/null | sort -V)
    [ ${#parts[@]} -gt 0 ] || mapfile -t parts < <(ls .data/cifar-10-python.tar.xz.part[0-9]* 2>/dev/null | sort -V)
    [ ${#parts[@]} -gt 0 ] || { [ -f .data/cifar-10-python.tar.xz ] && parts=(.data/cifar-10-python.tar.xz); }
    if [ ${#parts[@]} -eq 0 ]; then
      echo "no original CIFAR-10: set CIFAR10_DIR, stage its parts (reproduce_gpu.sh stage PART)," \
        "or put them in .data/" >&2
      return 3
    fi
    mkdir -p "$data_root"
    cat "${parts[@]}" > "$archive"
    local sha
    sha=$(sha256sum "$archive" | cut -d' ' -f1)
    if [ "$sha" != "$expected_sha256" ]; then
      echo "the joined archive from ${parts[*]} has sha256 $sha, not $expected_sha256" \
        "(a part missing, damaged or out of order); nothing trained" >&2
      return 3
    fi
    echo "joined ${#parts[@]} part(s), sha256 $sha: ok" >&2
    rm -rf "$extracted"
    tar xJf "$archive" -C "$data_root"
    [ -f "$extracted/data_batch_1" ] || { echo "$archive holds no cifar-10-batches-py/" >&2; return 3; }
    touch "$extracted/.complete"
  fi
  echo "$extracted"
}
jpeg_copy_dir() {
  if [ -n "${JPEG_DIR:-}" ]; then echo "$JPEG_DIR"; return; fi
  mkdir -p "$data_root"
  [ -d "$data_root/cifar10-jpeg" ] || \
    tar xzf "${JPEG_TARBALL:-.data/cifar10-jpeg.tar.gz}" -C "$data_root"
  echo "$data_root/cifar10-jpeg"
}

pack() {  # Records and logs into $out, atomically (a kill mid-write keeps the old pack).
  (cd "$work" && find . -name config.json -o -name metrics.jsonl -o -name train.log \
     | grep -v /checkpoints/ | tar czf "$out/.records_$label.tgz" -T - 2>/dev/null) \
    && mv "$out/.records_$label.tgz" "$out/records_$label.tgz"
  tar czf "$out/.logs_$label.tgz" -C "$work" logs 2>/dev/null \
    && mv "$out/.logs_$label.tgz" "$out/logs_$label.tgz"
}
# Its output goes to a log, not to this script's stdout/stderr: a `sleep` the
# kill below leaves behind would otherwise hold the caller's pipes open for up
# to 30 s after the script has exited.
(while sleep 30; do pack || true; done) >> "$logs/packer.log" 2>&1 &
packer=$!
trap 'kill $packer 2>/dev/null || true; pack || true' EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  > "$logs/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$logs/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())" > "$logs/versions.txt" 2>&1

# Load, decode and whiten a data folder once (the first run that needs it);
# the runs then read the data cache.
declare -A warmed=()
warm_cache() {  # SOURCE FOLDER
  [ -z "${warmed[$1:$2]:-}" ] || return 0
  warmed[$1:$2]=1
  python3 -c "import sys
from configs import cifar
from wn_jax.data import cache
data = cifar.get_config().data
data.source, data.folder = sys.argv[1], sys.argv[2]
print(cache.load_whitened(data).report)" "$1" "$2" >> "$logs/data_cache.log" 2>&1
}

# train NAME: one process, in the background, with the overrides its name
# spells out. Processes sharing the GPU get equal slices of its memory.
train() {
  local name=$1 source=cifar10_python data_dir
  [[ $name =~ $run_pattern ]]
  local variant=${BASH_REMATCH[1]} lr=${BASH_REMATCH[2]} seed=${BASH_REMATCH[5]}
  local change=${BASH_REMATCH[7]}
  local args=(--config.optimizer.learning_rate="$lr" --config.seed="$seed")
  case $change in
    jpegcopy) source=folder; data_dir=$(jpeg_copy_dir) ;;
    jpeg_q*)
      local q=${change#jpeg_q}
      source=folder
      data_dir=$data_root/original_jpeg_q$q
      local original
      original=$(original_dir)
      [ -d "$data_dir" ] || python3 -m wn_jax.study.reencode "$original" "$data_dir" \
        --source cifar10_python --quality "$q" --subsampling 4:2:0 \
        > "$logs/reencode_q$q.log" 2>&1 ;;
    *) data_dir=$(original_dir) ;;
  esac
  case $change in
    precision_highest) args+=(--config.matmul_precision=highest) ;;
    zca*) args+=(--config.data.zca_regularization="${change#zca}") ;;
  esac
  warm_cache "$source" "$data_dir"
  XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction timeout "$budget" \
    python3 train.py --config "configs/cifar.py:${variant/_direct/,direct}" --workdir "$work/$name" \
      --config.data.source="$source" --config.data.folder="$data_dir" \
      --config.checkpoint_every_epochs=10 "${args[@]}" $extra \
      > "$logs/$name.log" 2>&1 &
  pids+=($!)
}

# train_seeds NAME CONFIG NUM_SEEDS [ARGS...]: seeds 0..NUM_SEEDS-1 of CONFIG
# as one vmapped sweep, checkpointed every epoch (a rerun with the same
# WORK_DIR resumes).
train_seeds() {
  local name=$1 config=$2 num_seeds=$3
  shift 3
  local seeds
  seeds=$(python3 -c "print(tuple(range($num_seeds)))")
  XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction timeout "$budget" \
    python3 train.py --config "$config" --workdir "$work/$name" "$@" \
      --config.sweep.seed="$seeds" --config.sweep.member_loop=vmap \
      --config.checkpoint_every_epochs=1 $extra > "$logs/$name.log" 2>&1 &
  pids+=($!)
}

# mnist_dir: the MNIST folder of the vae_mnist and draw_mnist runs.
mnist_dir() {
  local mnist=${MNIST_DIR:-.data/mnist}
  [ -d "$mnist" ] || { echo "no MNIST: set MNIST_DIR or put the four files in .data/mnist" >&2
                       return 3; }
  echo "$mnist"
}

# train_atari NAME: one seed of an Atari DQN, checkpointed every epoch.
train_atari() {
  local name=$1
  [[ $name =~ $atari_pattern ]]
  local game=${BASH_REMATCH[1]} variant=${BASH_REMATCH[2]} lr=${BASH_REMATCH[4]}
  local seed=${BASH_REMATCH[7]} short=${BASH_REMATCH[8]} args=()
  [ "$game" = space_invaders ] || variant="$variant,$game"
  [ -z "$short" ] || variant="$variant,short_epochs"
  [ -z "$lr" ] || args+=(--config.optimizer.learning_rate="$lr")
  XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction timeout "$budget" \
    python3 train.py --config "configs/atari_dqn.py:$variant" --workdir "$work/$name" \
      --config.seed="$seed" --config.checkpoint_every_epochs=1 "${args[@]}" $extra \
      > "$logs/$name.log" 2>&1 &
  pids+=($!)
}

# train_named NAME: a vae_mnist, draw_mnist, dqn_minatar or dqn_atari run.
train_named() {
  local name=$1 mnist
  if [[ $name =~ $vae_pattern ]]; then
    mnist=$(mnist_dir) || return 3
    # normal_direct -> normal,direct: the direct reading of normal (docs/VAE.md).
    train_seeds "$name" "configs/mnist_vae.py:${BASH_REMATCH[1]/_direct/,direct}" "${BASH_REMATCH[2]}" \
      --config.data.folder="$mnist"
  elif [[ $name =~ $draw_pattern ]]; then
    mnist=$(mnist_dir) || return 3
    # wn_g_norm -> wn,g_norm: g starting at ||v|| (docs/DRAW.md).
    train_seeds "$name" "configs/mnist_draw.py:${BASH_REMATCH[1]/_g_norm/,g_norm}" "${BASH_REMATCH[2]}" \
      --config.data.folder="$mnist"
  elif [[ $name =~ $atari_pattern ]]; then
    train_atari "$name"
  else
    [[ $name =~ $dqn_pattern ]]
    local variant=${BASH_REMATCH[1]} lr=${BASH_REMATCH[3]} num_seeds=${BASH_REMATCH[6]}
    local args=()
    [ -z "$lr" ] || args+=(--config.optimizer.learning_rate="$lr")
    train_seeds "$name" "configs/minatar_dqn.py:$variant" "$num_seeds" "${args[@]}"
  fi
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
  for run in "${runs[@]}"; do
    if [[ $run =~ $run_pattern ]]; then train "$run"; else train_named "$run"; fi
  done
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
