"""Training and evaluation: `train_and_evaluate(config, workdir)`.

One program trains one or many runs ("members", `wn_jax.sweep`): every
array of the `TrainState` has a leading member axis, and the train step,
the data-dependent init and the evaluation are `jax.vmap`s of the
one-member functions, jitted once. A plain run is the one-member case.

Devices: a mesh (members, data) with every device on `data`: each batch is
sharded along `data`, the members are replicated (XLA partitions the
vmapped 1x1 convs wrongly when they are split over devices: measured with
jax 0.10.2 on CPU, see `create_mesh`); one jitted step, no pmap. Batch statistics, the data-dependent
init and mean-only BN are therefore those of each member's global batch.
The whitened data set lives on the devices; a step receives only the
indices of its batch and gathers the images itself.

Reproducibility: each member's root key is `jax.random.key(seed)`; the
step's noise, dropout and augmentation keys are `fold_in(step_key, step)`,
and epoch `e` visits the training set in the order `epoch_permutation(seed,
e)`, so a run resumed from a checkpoint is identical to an uninterrupted
one, and a member of a sweep is the run trained alone with its values.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wn_jax import input_pipeline, layers, models, sweep

Array = jax.Array
PyTree = Any

CONV_WEIGHT_GRADS = ("auto", "xla", "per_tap")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Config keys that may change between a run and its resumption: they do not
# change what is computed.
RESUMABLE_KEYS = ("log_every_steps", "log_norms_every_steps", "checkpoint_every_epochs",
                  "keep_checkpoints", "eval_batch_size", "distributed.enabled",
                  "distributed.coordinator_address", "distributed.num_processes",
                  "distributed.process_id", "sweep.member_loop",
                  "model.conv_weight_grad", "data.folder", "data.tfds_data_dir",
                  "data.cache_dir")
CHECKPOINT_HEADROOM_FACTOR = 4  # free disk needed, in checkpoint sizes
MESH_AXES = ("members", "data")
# float32 convs and matmuls: 'default' lets the backend choose (TF32 on
# NVIDIA Ampere/Hopper GPUs), 'highest' computes in full float32.
MATMUL_PRECISIONS = ("default", "high", "highest")


class NonFiniteLossError(RuntimeError):
  """Raised when the training loss of every member becomes NaN or inf."""


@struct.dataclass
class TrainState:
  """Everything a run carries from step to step (and into a checkpoint).

  In a sweep every leaf has a leading member axis [M].

  params: trainable parameters ('params' collection).
  model_state: the other collections: 'batch_stats' (running statistics of
    BN / mean-only BN) and 'frozen' (the paper's `normal` data-init scale).
  nonfinite_step: -1, or the step whose training loss was NaN or inf; from
    that step on the member's parameters are no longer updated.
  ema_params: exponential moving average of `params` (Polyak averaging,
    `config.ema_decay`), or None when it is off.
  """
  step: Array
  params: PyTree
  model_state: PyTree
  opt_state: optax.OptState
  nonfinite_step: Array
  ema_params: PyTree = None


# ---------------------------------------------------------------------------
# Config checks: every bad value fails here, before any data or compile.


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError naming the key and what to do for a bad config."""
  def positive(key, value):
    if not value > 0:
      raise ValueError(f"config.{key} must be positive, got {value!r}.")

  layers.check_parameterization(config.model.parameterization)
  layers.check_init_order(config.model.init_order)
  positive("optimizer.learning_rate", config.optimizer.learning_rate)
  positive("batch_size", config.batch_size)
  positive("num_epochs", config.num_epochs)
  positive("model.width", config.model.width)
  positive("eval_batch_size", config.eval_batch_size)
  positive("checkpoint_every_epochs", config.checkpoint_every_epochs)
  positive("eval_every_epochs", config.eval_every_epochs)
  positive("keep_checkpoints", config.keep_checkpoints)
  positive("log_every_steps", config.log_every_steps)
  if config.log_norms_every_steps < 0:
    raise ValueError("config.log_norms_every_steps must be >= 0 (0 = off).")
  sweep.member_configs(config)  # Checks the sweep lists.
  if config.batch_size % num_devices:
    raise ValueError(
        f"config.batch_size={config.batch_size} is not divisible by the "
        f"{num_devices} devices; use a multiple of {num_devices}.")
  if config.init_batch_size < 2:
    raise ValueError(
        f"config.init_batch_size={config.init_batch_size}: the data-dependent "
        "init needs at least 2 examples to compute a standard deviation.")
  if not 0 <= config.optimizer.anneal_start_epoch <= config.num_epochs:
    raise ValueError(
        f"config.optimizer.anneal_start_epoch={config.optimizer.anneal_start_epoch}"
        f" must lie in [0, num_epochs={config.num_epochs}]; set it too when "
        "changing num_epochs (the paper anneals over the second half).")
  if config.model.conv_weight_grad not in CONV_WEIGHT_GRADS:
    raise ValueError(f"config.model.conv_weight_grad must be one of "
                     f"{CONV_WEIGHT_GRADS}, got {config.model.conv_weight_grad!r}.")
  if config.model.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype must be one of {tuple(DTYPES)}, got "
                     f"{config.model.dtype!r}.")
  if config.data.source not in input_pipeline.VALID_SOURCES:
    raise ValueError(f"config.data.source must be one of "
                     f"{input_pipeline.VALID_SOURCES}, got {config.data.source!r}.")
  if config.data.source == "folder" and not config.data.folder:
    raise ValueError("config.data.source='folder' needs config.data.folder="
                     "<root with train/ and test/ class folders>.")
  if config.data.train_subset < 0:
    raise ValueError(f"config.data.train_subset must be >= 0 (0 = the whole training set), "
                     f"got {config.data.train_subset!r}.")
  if config.data.augment_max_translation < 0:
    raise ValueError("config.data.augment_max_translation must be >= 0.")
  if not 0 <= config.ema_decay < 1:
    raise ValueError(f"config.ema_decay must lie in [0, 1) (0 = off), got "
                     f"{config.ema_decay!r}.")
  if config.sweep.member_loop not in MEMBER_LOOPS:
    raise ValueError(f"config.sweep.member_loop must be one of {MEMBER_LOOPS}, got "
                     f"{config.sweep.member_loop!r}.")
  if config.matmul_precision not in MATMUL_PRECISIONS:
    raise ValueError(f"config.matmul_precision must be one of {MATMUL_PRECISIONS}, got "
                     f"{config.matmul_precision!r}.")


# ---------------------------------------------------------------------------
# Model, optimizer, and the pure step functions (one member each).


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> models.CifarNet:
  conv_weight_grad = config.model.conv_weight_grad
  if conv_weight_grad == "auto":  # per-tap matmuls only pay off on XLA:CPU.
    conv_weight_grad = "per_tap" if jax.default_backend() == "cpu" else "xla"
  m = config.model
  return models.CifarNet(
      num_classes=num_classes, width=m.width, parameterization=m.parameterization,
      data_init=m.data_init, init_scale=m.init_scale, init_order=m.init_order,
      input_noise=m.input_noise,
      dropout_rate=m.dropout_rate, leaky_relu_slope=m.leaky_relu_slope,
      bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
      conv_weight_grad=conv_weight_grad, dtype=DTYPES[m.dtype])


def learning_rate_and_b1(config: ml_collections.ConfigDict, steps_per_epoch: int,
                         learning_rate: float | Array | None = None
                         ) -> tuple[optax.Schedule, optax.Schedule]:
  """Per-epoch schedules of the authors' code, as functions of the step.

  lr(epoch) = lr * min((num_epochs - epoch) / (num_epochs - anneal_start), 1)
  (code: `lr * min(2 - epoch/100, 1)` for 200 epochs, anneal at 100);
  b1(epoch) = b1 before `anneal_start_epoch`, `b1_anneal` from then on.
  `learning_rate` (default `config.optimizer.learning_rate`) is the base
  `lr`; it may be a traced value, one per sweep member.
  """
  opt = config.optimizer
  base = opt.learning_rate if learning_rate is None else learning_rate
  anneal_epochs = max(config.num_epochs - opt.anneal_start_epoch, 1)

  def epoch_of(step):
    return step // steps_per_epoch

  def schedule(step):
    remaining = (config.num_epochs - epoch_of(step)) / anneal_epochs
    return base * jnp.clip(remaining, 0.0, 1.0)

  def b1(step):
    return jnp.where(epoch_of(step) < opt.anneal_start_epoch, opt.b1, opt.b1_anneal)

  return schedule, b1


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     learning_rate: float | Array | None = None
                     ) -> optax.GradientTransformation:
  """Adam with epsilon inside the square root (code: m/sqrt(v + 1e-8)).

  `learning_rate`: the base learning rate (default the config's), a traced
  value inside a sweep, so each member's schedule reaches optax as data.
  """
  schedule, b1 = learning_rate_and_b1(config, steps_per_epoch, learning_rate)
  return optax.inject_hyperparams(optax.adam)(
      learning_rate=schedule, b1=b1, b2=config.optimizer.b2,
      eps=config.optimizer.eps, eps_root=config.optimizer.eps_root)


def cross_entropy_and_error(logits: Array, labels: Array) -> tuple[Array, Array]:
  """Per-example softmax cross-entropy and 0/1 error: [B, K], [B] -> [B], [B]."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  error = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  return loss, error


def _step_rngs(step_key: Array, step: Array) -> dict[str, Array]:
  noise, dropout, augment = jax.random.split(jax.random.fold_in(step_key, step), 3)
  return {"noise": noise, "dropout": dropout, "augment": augment}


Optimizer = Callable[[Array], optax.GradientTransformation]  # base lr -> Adam


def initialize(init_batch: Array, init_key: Array, init_scale: Array,
               learning_rate: Array, *, model: models.CifarNet, optimizer: Optimizer,
               data_init: Array | None = None, ema: bool = False) -> TrainState:
  """The data-dependent init of one member, then its optimizer state.

  Runs in training mode (noise and dropout on), as the authors' code does.
  init_batch [N, H, W, C]; `init_scale` and `learning_rate` are scalars
  (traced in a sweep). `data_init`: None uses `model.data_init`; a boolean
  scalar (traced in a sweep that mixes both) selects between the
  data-dependent init and `g = ||v||, b = 0` of the same draw of `v`.
  `ema`: start a moving average of the parameters at their initial values.
  """
  params_key, noise_key, dropout_key = jax.random.split(init_key, 3)
  rngs = {"params": params_key, "noise": noise_key, "dropout": dropout_key}
  model = model.clone(init_scale=init_scale)
  if data_init is None:
    variables = model.init(rngs, init_batch, train=True)
  else:
    with_data = model.clone(data_init=True).init(rngs, init_batch, train=True)
    without = model.clone(data_init=False).init(rngs, init_batch, train=True)
    if jax.tree.structure(with_data) != jax.tree.structure(without):
      raise ValueError(
          f"A sweep cannot mix data_init=True and False for parameterization "
          f"{model.parameterization!r}: its variables differ (the frozen scale of "
          "the data-dependent init); launch the two as separate runs.")
    variables = jax.tree.map(lambda a, b: jnp.where(data_init, a, b), with_data, without)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=dict(variables),
                    opt_state=optimizer(learning_rate).init(params),
                    nonfinite_step=jnp.full((), -1, jnp.int32),
                    ema_params=params if ema else None)


def train_step(state: TrainState, images: Array, labels: Array, step_key: Array,
               learning_rate: Array, *, model: models.CifarNet, optimizer: Optimizer,
               augment_flip: bool, augment_max_translation: int, ema_decay: float = 0.0
               ) -> tuple[TrainState, dict[str, Array]]:
  """One Adam step of one member on a batch.

  images [B, H, W, C] float32, labels [B] int32, `learning_rate` the
  member's base learning rate (scalar). Returns the new state and metrics
  {loss, error, learning_rate} of the batch (noise and dropout on, batch
  statistics), computed before the update. If the state carries
  `ema_params`, they become `ema_decay * ema + (1 - ema_decay) * params`
  with the updated params.
  """
  rngs = _step_rngs(step_key, state.step)
  images = input_pipeline.augment(rngs.pop("augment"), images, augment_flip,
                                   augment_max_translation)

  def loss_fn(params):
    logits, updates = model.apply(
        {"params": params, **state.model_state}, images, train=True, rngs=rngs,
        mutable=["batch_stats"])
    loss, error = cross_entropy_and_error(logits, labels)
    return jnp.mean(loss), (jnp.mean(error), updates)

  (loss, (error, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  param_updates, opt_state = optimizer(learning_rate).update(
      grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, param_updates)
  new_state = state.replace(
      step=state.step + 1, params=params,
      model_state={**state.model_state, **updates}, opt_state=opt_state,
      ema_params=optax.incremental_update(params, state.ema_params, 1 - ema_decay)
      if state.ema_params is not None else None)
  metrics = {"loss": loss, "error": error,
             "learning_rate": state.opt_state.hyperparams["learning_rate"]}
  return new_state, metrics


def keep_finite(state: TrainState, new_state: TrainState, loss: Array) -> TrainState:
  """`new_state`, unless the loss is non-finite or was before: then the
  member keeps `state`'s parameters and statistics for good (only its step
  advances), and `nonfinite_step` records the step where it happened."""
  healthy = state.nonfinite_step < 0
  update = healthy & jnp.isfinite(loss)
  keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(update, new, old))
  return new_state.replace(
      params=keep(new_state.params, state.params),
      model_state=keep(new_state.model_state, state.model_state),
      opt_state=keep(new_state.opt_state, state.opt_state),
      ema_params=keep(new_state.ema_params, state.ema_params),
      nonfinite_step=jnp.where(healthy & ~update, state.step, state.nonfinite_step))


def eval_step(state: TrainState, images: Array, labels: Array, mask: Array, *,
              model: models.CifarNet) -> dict[str, Array]:
  """Summed loss, errors and count over a masked batch (deterministic mode)."""
  logits = model.apply({"params": state.params, **state.model_state}, images,
                       train=False)
  loss, error = cross_entropy_and_error(logits, labels)
  return {"loss": jnp.sum(loss * mask), "error": jnp.sum(error * mask),
          "count": jnp.sum(mask)}


def weight_norm_stats(params: PyTree) -> dict[str, Array]:
  """Mean ||v|| and mean g/||v|| (effective scale) of every WN layer.

  A cheap on-device reduction over the params: returns two scalars per
  layer, keyed '<layer path>/v_norm' and '<layer path>/g_over_v_norm'.
  """
  stats = {}
  flat = {tuple(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  for path, v in flat.items():
    if path[-1] != "v" or path[:-1] + ("g",) not in flat:
      continue
    g = flat[path[:-1] + ("g",)]
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))
    name = "/".join(path[:-1])
    stats[f"{name}/v_norm"] = jnp.mean(norm)
    stats[f"{name}/g_over_v_norm"] = jnp.mean(g / norm)
  return stats


# ---------------------------------------------------------------------------
# The sweep: the one-member functions, vmapped over the member axis. The data
# set stays on the devices; the functions gather their batch from indices.


MEMBER_LOOPS = ("auto", "vmap", "unroll")


def over_members(fn: Callable[..., Any], *member_args: PyTree, member_loop: str) -> Any:
  """`fn` on every member's slice of `member_args` (leading axis [M]).

  'vmap' batches the members into one computation (their convs become
  grouped convs: what fills a GPU; on XLA:CPU measured 2.4-3x slower than
  the members one after another); 'unroll' writes one copy of `fn` per
  member into the one program (compile time grows with M; on XLA:CPU as
  fast as the members one after another; `lax.map` was measured 3x
  slower); 'auto' is 'unroll' on CPU and 'vmap' elsewhere.
  """
  if member_loop == "auto":
    member_loop = "unroll" if jax.default_backend() == "cpu" else "vmap"
  if member_loop == "vmap":
    return jax.vmap(fn)(*member_args)
  num_members = jax.tree.leaves(member_args)[0].shape[0]
  outputs = [fn(*jax.tree.map(lambda a: a[k], member_args)) for k in range(num_members)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)


def sweep_init(train_images: Array, init_rows: Array, init_keys: Array,
               init_scales: Array, learning_rates: Array, data_init: Array | None, *,
               member_loop: str = "auto", **kwargs) -> TrainState:
  """`initialize` for every member: init_rows [M, N] index train_images."""
  def member(rows, key, init_scale, learning_rate, *data_init):
    return initialize(train_images[rows], key, init_scale, learning_rate,
                      data_init=data_init[0] if data_init else None, **kwargs)
  member_args = (init_rows, init_keys, init_scales, learning_rates)
  if data_init is not None:
    member_args += (data_init,)
  return over_members(member, *member_args, member_loop=member_loop)


def sweep_train_step(state: TrainState, train_images: Array, train_labels: Array,
                     epoch_rows: Array, step_keys: Array, learning_rates: Array, *,
                     steps_per_epoch: int, member_loop: str = "auto", **kwargs
                     ) -> tuple[TrainState, dict[str, Array]]:
  """`train_step` for every member, with its own batch, keys and lr.

  epoch_rows [M, steps_per_epoch, B]: each member's batches of this epoch;
  the step takes row `step % steps_per_epoch`. Returns the stacked state
  and metrics [M]. A member whose loss turns non-finite stops updating
  (`keep_finite`); the others go on.
  """
  def member(state, rows, step_key, learning_rate):
    batch_rows = rows[state.step % steps_per_epoch]
    new_state, metrics = train_step(state, train_images[batch_rows],
                                    train_labels[batch_rows], step_key, learning_rate,
                                    **kwargs)
    return keep_finite(state, new_state, metrics["loss"]), metrics
  return over_members(member, state, epoch_rows, step_keys, learning_rates,
                      member_loop=member_loop)


def sweep_eval_step(state: TrainState, test_images: Array, test_labels: Array,
                    rows: Array, mask: Array, *, member_loop: str = "auto",
                    **kwargs) -> dict[str, Array]:
  """`eval_step` of every member on the same test batch: sums [M]."""
  images, labels = test_images[rows], test_labels[rows]
  return over_members(lambda s: eval_step(s, images, labels, mask, **kwargs), state,
                      member_loop=member_loop)


# ---------------------------------------------------------------------------
# Devices and data placement.


def create_mesh() -> Mesh:
  """The (members, data) mesh: every device along `data`.

  The members stay replicated. Splitting them over devices (a `members`
  axis longer than 1) was measured to compute wrong results: XLA (jax
  0.10.2, CPU) partitions the grouped convolutions that `vmap` makes of
  convs it turns into dots (1x1 kernels, or a kernel covering its whole
  input) wrongly when their groups are sharded.
  """
  return Mesh(np.asarray(jax.devices()).reshape(1, -1), MESH_AXES)


def mesh_sharding(mesh: Mesh, *spec) -> NamedSharding:
  """`NamedSharding(mesh, PartitionSpec(*spec))`; no spec: replicated."""
  return NamedSharding(mesh, PartitionSpec(*spec))


def put_global(host_array: np.ndarray, sharding: NamedSharding) -> Array:
  """Places an array that every process holds whole, in any sharding.

  Each process supplies the blocks of its own devices (replicated, sharded
  or partly both), so this is right on one host and on many.
  """
  return jax.make_array_from_callback(host_array.shape, sharding,
                                      lambda index: host_array[index])


def fetch(tree: PyTree) -> PyTree:
  """Device arrays to host numpy, also those spread over many hosts."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _eval_rows(num_examples: int, batch_size: int):
  """Fixed-size eval batches of row indices, the last one padded with row 0
  and masked out: yields (rows int32 [batch_size], mask float32 [batch_size])."""
  for start in range(0, num_examples, batch_size):
    rows = np.arange(start, min(start + batch_size, num_examples), dtype=np.int32)
    mask = np.ones(batch_size, np.float32)
    mask[len(rows):] = 0
    yield np.pad(rows, (0, batch_size - len(rows))), mask


# ---------------------------------------------------------------------------
# Workdir: config record, checkpoints, metrics.


def _flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      flat.update(_flatten_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def check_resumable_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints come from another config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _flatten_config(json.load(f))
  current = _flatten_config(json.loads(config.to_json()))
  differing = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
  if differing:
    details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}"
                        for k in differing)
    raise ValueError(
        f"Workdir {workdir} holds checkpoints of a different config ({details}). "
        "Refusing to resume: use a new --workdir, or the saved config.")


def check_workdir(workdir: str, needed_bytes: int) -> None:
  """Clear errors for an unwritable workdir or a full disk, before training."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(f"Workdir {workdir!r} is not writable: {e}. Choose another "
                  "--workdir.") from e
  free = shutil.disk_usage(workdir).free
  if free < needed_bytes:
    raise OSError(
        f"Only {free / 2**20:.0f} MiB free under {workdir!r}, but checkpoints "
        f"need about {needed_bytes / 2**20:.0f} MiB; free disk space or choose "
        "another --workdir.")


def _create_summary_writer(workdir: str):
  """clu's TensorBoard + logging writer, or None where TensorFlow is missing.

  clu imports TensorFlow; accelerator images often have only JAX, and the
  run must still work there (metrics.jsonl always has everything).
  """
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    logging.warning("No TensorBoard events (%s); metrics go to metrics.jsonl.", e)
    return None
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=False)


class _MetricsLog:
  """Appends one JSON object per line to workdir/metrics.jsonl."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    # Drop records past the restored checkpoint (process 0 alone writes the
    # file; another host rewriting it could drop process 0's new records).
    if jax.process_index() == 0 and os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if jax.process_index() != 0:
      return
    with open(self.path, "a") as f:
      record = {k: v if isinstance(v, (int, str)) else float(v)
                for k, v in metrics.items()}
      f.write(json.dumps({"step": step, **record}) + "\n")


class _MemberRecords:
  """One member's record folder: config.json, metrics.jsonl, TensorBoard."""

  def __init__(self, directory: str, config: ml_collections.ConfigDict,
               resume_step: int | None):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)
    if jax.process_index() == 0:
      with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    self.writer = _create_summary_writer(directory)
    # A fresh start drops every record of an earlier attempt that died before
    # its first checkpoint; a resume keeps those up to the restored step.
    self.metrics = _MetricsLog(directory, resume_step if resume_step is not None else -1)

  def write(self, step: int, record: Mapping[str, Any], scalars: bool = False) -> None:
    self.metrics.write(step, record)
    if scalars and self.writer is not None:
      self.writer.write_scalars(step, record)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.flush()


# ---------------------------------------------------------------------------
# The run, in stages: devices, data, members, state, epochs, records.


def initialize_distributed(distributed: ml_collections.ConfigDict) -> None:
  """Joins a multi-host cluster with `jax.distributed.initialize` if enabled.

  Each host then runs the same program; `jax.devices()` spans all hosts and
  every host holds the (small) data set and feeds its own devices. On CPU
  hosts the collectives go through gloo.
  """
  if not distributed.enabled:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=distributed.coordinator_address or None,
      num_processes=distributed.num_processes or None,
      process_id=distributed.process_id if distributed.process_id >= 0 else None)


class DeviceData(NamedTuple):
  """The whitened data set, replicated on every device.

  train_images [N, H, W, C] float32, train_labels [N] int32, test_images
  [M, H, W, C], test_labels [M]; num_classes.
  """
  train_images: Array
  train_labels: Array
  test_images: Array
  test_labels: Array
  num_classes: int


def load_data(config: ml_collections.ConfigDict, mesh: Mesh) -> DeviceData:
  """Loads and whitens the data set (or reads both from the data cache),
  logging the times, and places it on the devices."""
  data = input_pipeline.load_whitened(config.data)
  logging.info("Loaded %d training and %d test images from %s in %.1f s (data cache: %s, %s).",
               len(data.train_x), len(data.test_x), config.data.source, data.report.load_seconds,
               data.report.cache, data.report.cache_dir)
  if config.data.train_subset:  # ZCA stays the one fitted on the whole training set.
    rows = input_pipeline.class_balanced_subset(data.train_y, config.data.train_subset)
    data = data._replace(train_x=data.train_x[rows], train_y=data.train_y[rows])
    logging.info("Training on a class-balanced subset of %d images (the first %d of each class).",
                 len(rows), len(rows) // len(data.class_names))
  if len(data.train_x) < max(config.batch_size, config.init_batch_size):
    raise ValueError(
        f"The training set has {len(data.train_x)} examples, fewer than "
        f"batch_size={config.batch_size} or init_batch_size={config.init_batch_size}.")
  logging.info("ZCA fitted and applied in %.1f s%s.", data.report.whiten_seconds,
               " (whitened arrays read from the data cache)" if data.report.cache == "hit" else "")
  replicated = mesh_sharding(mesh)
  return DeviceData(
      put_global(data.train_x, replicated), put_global(data.train_y, replicated),
      put_global(data.test_x, replicated), put_global(data.test_y, replicated),
      num_classes=len(data.class_names))


class Members(NamedTuple):
  """The sweep's members: effective configs, record folders, and their
  per-member values as host arrays [M]."""
  configs: list[ml_collections.ConfigDict]
  record_dirs: list[str]
  seeds: np.ndarray
  learning_rates: np.ndarray
  init_scales: np.ndarray
  data_init: np.ndarray | None  # None: all members share config.model.data_init.


def sweep_members(config: ml_collections.ConfigDict, workdir: str) -> Members:
  configs = sweep.member_configs(config)
  if sweep.is_sweep(config):
    record_dirs = [os.path.join(workdir, sweep.member_name(c)) for c in configs]
  else:
    record_dirs = [workdir]
  data_init = np.array([c.model.data_init for c in configs])
  return Members(
      configs, record_dirs,
      seeds=np.array([c.seed for c in configs], np.int32),
      learning_rates=np.array([c.optimizer.learning_rate for c in configs], np.float32),
      init_scales=np.array([c.model.init_scale for c in configs], np.float32),
      data_init=data_init if len(set(data_init.tolist())) > 1 else None)


def _epoch_rows(members: Members, epoch: int, num_examples: int,
                batch_size: int) -> np.ndarray:
  """int32 [M, steps_per_epoch, B]: each member's batches of `epoch`."""
  # Sorted rows gather faster; the order within a batch does not matter.
  return np.stack([np.sort(input_pipeline.batch_indices(int(seed), epoch, num_examples,
                                                         batch_size), axis=1)
                   for seed in members.seeds]).astype(np.int32)


def _init_rows(members: Members, num_examples: int, init_batch_size: int) -> np.ndarray:
  """int32 [M, init_batch_size]: each member's init batch (its seed's draw)."""
  return np.stack([np.sort(np.random.default_rng(int(seed)).permutation(num_examples)
                           [:init_batch_size]) for seed in members.seeds]).astype(np.int32)


class Program(NamedTuple):
  """A run's placements and jitted functions, built once per start."""
  mesh: Mesh
  members: Members
  data: DeviceData
  steps_per_epoch: int
  learning_rates: Array  # [M]
  step_keys: Array  # [M] keys
  init_fn: Callable[..., TrainState]
  init_args: tuple
  step_fn: Callable[..., tuple[TrainState, dict[str, Array]]]
  eval_fn: Callable[..., dict[str, Array]]
  eval_batches: list[tuple[Array, Array]]  # (rows, mask), each [eval batch]
  norms_fn: Callable[[PyTree], dict[str, Array]] | None  # None: no WN layer.

  def sharding(self, *spec) -> NamedSharding:
    return mesh_sharding(self.mesh, *spec)


def build_program(config: ml_collections.ConfigDict, mesh: Mesh, members: Members,
                  data: DeviceData) -> Program:
  """The model, the keys and the jitted init, step, eval and norms."""
  sharding = functools.partial(mesh_sharding, mesh)
  replicated, per_member = sharding(), sharding("members")
  data_devices = mesh.shape["data"]
  num_train = data.train_images.shape[0]
  steps_per_epoch = num_train // config.batch_size
  model = create_model(config, num_classes=data.num_classes)
  optimizer = functools.partial(create_optimizer, config, steps_per_epoch)
  learning_rates = put_global(members.learning_rates, per_member)
  # Each member's init and training draw from separate streams of its seed;
  # step keys are fold_in(step_key, step) inside the step.
  init_keys, step_keys = jax.jit(
      jax.vmap(lambda seed: tuple(jax.random.split(jax.random.key(seed)))),
      out_shardings=per_member)(put_global(members.seeds, per_member))
  init_rows = _init_rows(members, num_train, config.init_batch_size)
  init_args = (
      data.train_images,
      put_global(init_rows, sharding("members", "data")
                 if config.init_batch_size % data_devices == 0 else per_member),
      init_keys, put_global(members.init_scales, per_member), learning_rates,
      None if members.data_init is None else put_global(members.data_init, per_member))
  member_loop = config.sweep.member_loop
  init_fn = jax.jit(functools.partial(sweep_init, model=model, optimizer=optimizer,
                                      ema=config.ema_decay > 0, member_loop=member_loop),
                    out_shardings=per_member)
  step_fn = jax.jit(
      functools.partial(sweep_train_step, steps_per_epoch=steps_per_epoch, model=model,
                        optimizer=optimizer, augment_flip=config.data.augment_flip,
                        augment_max_translation=config.data.augment_max_translation,
                        ema_decay=config.ema_decay, member_loop=member_loop),
      in_shardings=(per_member, replicated, replicated, sharding("members", None, "data"),
                    per_member, per_member),
      out_shardings=(per_member, per_member), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(sweep_eval_step, model=model,
                                      member_loop=member_loop),
                    in_shardings=(per_member, replicated, replicated, sharding("data"),
                                  sharding("data")),
                    out_shardings=per_member)
  eval_batch_size = -(-config.eval_batch_size // data_devices) * data_devices
  eval_batches = [(put_global(rows, sharding("data")), put_global(mask, sharding("data")))
                  for rows, mask in _eval_rows(data.test_images.shape[0], eval_batch_size)]
  one_member = jax.eval_shape(lambda *a: jax.tree.map(lambda x: x[0], init_fn(*a)),
                              *init_args)
  has_norms = bool(jax.eval_shape(weight_norm_stats, one_member.params))
  norms_fn = (jax.jit(jax.vmap(weight_norm_stats), out_shardings=per_member)
              if config.log_norms_every_steps > 0 and has_norms else None)
  return Program(mesh, members, data, steps_per_epoch, learning_rates, step_keys,
                 init_fn, init_args, step_fn, eval_fn, eval_batches, norms_fn)


def init_or_restore(config: ml_collections.ConfigDict, workdir: str, program: Program
                    ) -> tuple[TrainState, ocp.CheckpointManager, int | None]:
  """The newest checkpoint in `workdir`, else the data-dependent init.

  Returns (state, checkpoint manager, restored step or None).
  """
  abstract_state = jax.eval_shape(program.init_fn, *program.init_args)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
  check_workdir(workdir, CHECKPOINT_HEADROOM_FACTOR * state_bytes)
  checkpoints = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                           create=True))
  latest = checkpoints.latest_step()
  if latest is not None:
    per_member = program.sharding("members")
    state = checkpoints.restore(latest, args=ocp.args.StandardRestore(
        jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=per_member),
                     abstract_state)))
    logging.info("Resumed from the checkpoint at step %d in %s.", latest, workdir)
  else:
    start = time.perf_counter()
    state = jax.block_until_ready(program.init_fn(*program.init_args))
    logging.info("Data-dependent init of %d member(s) on %d examples each: %.1f s "
                 "(with compile).", len(program.members.configs), config.init_batch_size,
                 time.perf_counter() - start)
  return state, checkpoints, latest


def _evaluate_params(program: Program, state: TrainState, prefix: str
                     ) -> list[dict[str, float]]:
  sums = None
  for rows, mask in program.eval_batches:
    out = program.eval_fn(state, program.data.test_images, program.data.test_labels,
                          rows, mask)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = fetch(sums)
  return [{f"{prefix}_loss": float(sums["loss"][k]) / float(sums["count"][k]),
           f"{prefix}_error": float(sums["error"][k]) / float(sums["count"][k])}
          for k in range(len(program.members.configs))]


def evaluate(program: Program, state: TrainState) -> list[dict[str, float]]:
  """Test loss and error of every member (deterministic mode); with a moving
  average of the parameters, also theirs ('ema_test_loss', 'ema_test_error')."""
  results = _evaluate_params(program, state, "test")
  if state.ema_params is not None:
    averaged = _evaluate_params(program, state.replace(params=state.ema_params), "ema_test")
    results = [{**raw, **avg} for raw, avg in zip(results, averaged)]
  return results


class _Records:
  """The members' records, and which members a non-finite loss stopped."""

  def __init__(self, config, workdir, members: Members, state: TrainState,
               latest: int | None):
    if sweep.is_sweep(config) and jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    # A plain run's one member records into the workdir itself.
    self.members = [_MemberRecords(d, c, latest)
                    for d, c in zip(members.record_dirs, members.configs)]
    self.names = [os.path.basename(d) for d in members.record_dirs]
    # index -> (step, loss) of members stopped by a non-finite loss.
    self.nonfinite = {k: (int(s), float("nan"))
                      for k, s in enumerate(fetch(state.nonfinite_step)) if s >= 0}

  def active(self):
    return [(k, r) for k, r in enumerate(self.members) if k not in self.nonfinite]

  def write_norms(self, step: int, norms: Mapping[str, np.ndarray]) -> None:
    for k, record in self.active():
      record.write(step, {name: value[k] for name, value in norms.items()})

  def add_window(self, window, stopped_at: np.ndarray, sums) -> None:
    """Adds fetched (step, metrics [M]) pairs to the epoch's `sums`; a member's
    first non-finite step is recorded and ends its sums."""
    for step, metrics in window:
      for k in range(len(self.members)):
        if stopped_at[k] < 0 or step < stopped_at[k]:
          sums["loss"][k] += metrics["loss"][k]
          sums["error"][k] += metrics["error"][k]
          sums["count"][k] += 1
        elif step == stopped_at[k] and k not in self.nonfinite:
          self.nonfinite[k] = (step, float(metrics["loss"][k]))
          message = (f"non-finite training loss {metrics['loss'][k]} at step {step}; "
                     "parameters frozen from this step on")
          logging.warning("Member %s: %s.", self.names[k], message)
          if len(self.members) > 1:
            self.members[k].write(step, {"nonfinite_loss": float(metrics["loss"][k]),
                                         "stopped": message})

  def close(self) -> None:
    for record in self.members:
      record.close()
    if len(self.members) > 1:
      stopped = ", ".join(f"{self.names[k]} (step {s})"
                          for k, (s, _) in sorted(self.nonfinite.items()))
      logging.info("Finished %d members: %d trained to the end%s.", len(self.members),
                   len(self.members) - len(self.nonfinite),
                   f"; stopped by a non-finite loss: {stopped}" if stopped else "")


def train_epoch(config: ml_collections.ConfigDict, program: Program, state: TrainState,
                epoch: int, records: _Records, stop_if_all_stopped: Callable[[], None]
                ) -> tuple[TrainState, dict[str, np.ndarray], dict[str, np.ndarray]]:
  """One epoch of every member. Metrics leave the device only at log steps.

  Returns the state, the epoch's summed metrics {loss, error, count} [M]
  and the last step's metrics.
  """
  num_members = len(program.members.configs)
  steps_per_epoch = program.steps_per_epoch
  num_steps = steps_per_epoch * config.num_epochs
  epoch_rows = put_global(
      _epoch_rows(program.members, epoch, program.data.train_images.shape[0],
                  config.batch_size), program.sharding("members", None, "data"))
  sums = {key: np.zeros(num_members) for key in ("loss", "error", "count")}
  window, window_start = [], time.perf_counter()
  for i in range(steps_per_epoch):
    step = epoch * steps_per_epoch + i
    state, metrics = program.step_fn(state, program.data.train_images,
                                     program.data.train_labels, epoch_rows,
                                     program.step_keys, program.learning_rates)
    window.append((step, metrics))
    if program.norms_fn and (step + 1) % config.log_norms_every_steps == 0:
      records.write_norms(step + 1, fetch(program.norms_fn(state.params)))
    if (step + 1) % config.log_every_steps == 0 or i + 1 == steps_per_epoch:
      window = fetch(window)
      records.add_window(window, fetch(state.nonfinite_step), sums)
      stop_if_all_stopped()
      last = window[-1][1]
      elapsed = time.perf_counter() - window_start
      logging.info(
          "epoch %d step %d/%d loss %s lr %s %.0f images/s per member (%d) ETA %s",
          epoch, step + 1, num_steps, " ".join(f"{x:.4f}" for x in last["loss"]),
          " ".join(f"{x:.2e}" for x in last["learning_rate"]),
          len(window) * config.batch_size / elapsed, num_members,
          time.strftime("%H:%M:%S", time.gmtime(
              (num_steps - step - 1) * elapsed / len(window))))
      window, window_start = [], time.perf_counter()
  return state, sums, last


def is_eval_epoch(epoch: int, eval_every_epochs: int, num_epochs: int) -> bool:
  """Whether the test set is evaluated after (1-based) `epoch`: every
  `eval_every_epochs`-th epoch, and always after the last."""
  return epoch % eval_every_epochs == 0 or epoch == num_epochs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains and evaluates per `config`, checkpointing into `workdir`.

  Resumes from the newest checkpoint in `workdir` if there is one. Returns
  the final state: one member's for a plain run, the stacked state [M, ...]
  for a sweep (`config.sweep`).
  """
  initialize_distributed(config.distributed)  # Before anything asks for devices.
  logging.info("JAX %s, backend %s, process %d of %d, devices: %s", jax.__version__,
               jax.default_backend(), jax.process_index(), jax.process_count(),
               jax.devices())
  validate_config(config, jax.device_count())
  if config.matmul_precision == "default":
    return _train_and_evaluate(config, workdir)
  # Traced under this setting, every conv and matmul of the run uses it.
  with jax.default_matmul_precision(config.matmul_precision):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  check_resumable_config(config, workdir)
  check_workdir(workdir, needed_bytes=0)
  mesh = create_mesh()
  members = sweep_members(config, workdir)
  program = build_program(config, mesh, members, load_data(config, mesh))
  state, checkpoints, latest = init_or_restore(config, workdir, program)
  records = _Records(config, workdir, members, state, latest)
  if program.norms_fn and latest is None:  # ||v|| and g/||v|| right after the init.
    records.write_norms(0, fetch(program.norms_fn(state.params)))
  last_good_checkpoint = latest

  def stop_if_all_stopped():
    if len(records.nonfinite) < len(members.configs):
      return
    where = (f"step {last_good_checkpoint} in {checkpoints.directory}"
             if last_good_checkpoint is not None else "none (no epoch finished)")
    step, loss = min(records.nonfinite.values())
    raise NonFiniteLossError(
        f"Non-finite training loss {loss} at step {step}. Stopped; the last good "
        f"checkpoint is {where}, left intact. Lower config.optimizer.learning_rate "
        "and start a new workdir or resume.")

  first_epoch = int(fetch(state.step)[0]) // program.steps_per_epoch
  for epoch in range(first_epoch, config.num_epochs):
    epoch_start = time.perf_counter()
    state, sums, last = train_epoch(config, program, state, epoch, records,
                                    stop_if_all_stopped)
    train_time = time.perf_counter() - epoch_start
    evaluated = is_eval_epoch(epoch + 1, config.eval_every_epochs, config.num_epochs)
    tests = evaluate(program, state) if evaluated else None
    step = (epoch + 1) * program.steps_per_epoch
    for k, record in records.active():
      summary = {"train_loss": sums["loss"][k] / sums["count"][k],
                 "train_error": sums["error"][k] / sums["count"][k],
                 "learning_rate": float(last["learning_rate"][k]),
                 "epoch": epoch + 1, **(tests[k] if evaluated else {}),
                 "epoch_time_s": train_time,
                 "images_per_s": program.steps_per_epoch * config.batch_size / train_time}
      record.write(step, summary, scalars=True)
      test = (f"test loss {summary['test_loss']:.4f} error {summary['test_error']:.4f}"
              if evaluated else "not evaluated")
      logging.info("%sepoch %d: train loss %.4f error %.4f | %s | %.0f s",
                   f"{records.names[k]}: " if len(members.configs) > 1 else "",
                   epoch + 1, summary["train_loss"], summary["train_error"], test, train_time)
    if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.num_epochs:
      checkpoints.save(step, args=ocp.args.StandardSave(state))
      checkpoints.wait_until_finished()
      last_good_checkpoint = step
  records.close()
  checkpoints.close()
  if sweep.is_sweep(config):
    return state
  return jax.tree.map(lambda x: x[0], state)
