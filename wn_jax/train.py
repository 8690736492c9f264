"""Training and evaluation: `train_and_evaluate(config, workdir)`.

Data parallel with JAX's own machinery: a 1-D mesh over all devices, the
batch sharded along it, parameters and optimizer state replicated, one
jitted train step (no pmap). Batch statistics, the data-dependent init and
mean-only BN are therefore those of the global batch.

Reproducibility: one root key from `config.seed`; the step's noise, dropout
and augmentation keys are `fold_in(root, step)`, and epoch `e` visits the
training set in the order `epoch_permutation(seed, e)`, so a run resumed
from a checkpoint is identical to an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wn_jax import input_pipeline, layers, models

Array = jax.Array
PyTree = Any

CONV_WEIGHT_GRADS = ("auto", "xla", "per_tap")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Config keys that may change between a run and its resumption: they do not
# change what is computed.
RESUMABLE_KEYS = ("log_every_steps", "log_norms_every_steps", "checkpoint_every_epochs",
                  "keep_checkpoints", "eval_batch_size", "distributed.enabled",
                  "distributed.coordinator_address", "distributed.num_processes",
                  "distributed.process_id",
                  "model.conv_weight_grad", "data.folder", "data.tfds_data_dir")
CHECKPOINT_HEADROOM_FACTOR = 4  # free disk needed, in checkpoint sizes


class NonFiniteLossError(RuntimeError):
  """Raised when the training loss becomes NaN or inf."""


@struct.dataclass
class TrainState:
  """Everything a run carries from step to step (and into a checkpoint).

  params: trainable parameters ('params' collection).
  model_state: the other collections: 'batch_stats' (running statistics of
    BN / mean-only BN) and 'frozen' (the paper's `normal` data-init scale).
  """
  step: Array
  params: PyTree
  model_state: PyTree
  opt_state: optax.OptState


# ---------------------------------------------------------------------------
# Config checks: every bad value fails here, before any data or compile.


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError naming the key and what to do for a bad config."""
  def positive(key, value):
    if not value > 0:
      raise ValueError(f"config.{key} must be positive, got {value!r}.")

  layers.check_parameterization(config.model.parameterization)
  positive("optimizer.learning_rate", config.optimizer.learning_rate)
  positive("batch_size", config.batch_size)
  positive("num_epochs", config.num_epochs)
  positive("model.width", config.model.width)
  positive("eval_batch_size", config.eval_batch_size)
  positive("checkpoint_every_epochs", config.checkpoint_every_epochs)
  positive("keep_checkpoints", config.keep_checkpoints)
  positive("log_every_steps", config.log_every_steps)
  if config.log_norms_every_steps < 0:
    raise ValueError("config.log_norms_every_steps must be >= 0 (0 = off).")
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
  if config.data.augment_max_translation < 0:
    raise ValueError("config.data.augment_max_translation must be >= 0.")


# ---------------------------------------------------------------------------
# Model, optimizer, and the pure step functions.


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> models.CifarNet:
  conv_weight_grad = config.model.conv_weight_grad
  if conv_weight_grad == "auto":  # per-tap matmuls only pay off on XLA:CPU.
    conv_weight_grad = "per_tap" if jax.default_backend() == "cpu" else "xla"
  m = config.model
  return models.CifarNet(
      num_classes=num_classes, width=m.width, parameterization=m.parameterization,
      data_init=m.data_init, init_scale=m.init_scale, input_noise=m.input_noise,
      dropout_rate=m.dropout_rate, leaky_relu_slope=m.leaky_relu_slope,
      bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
      conv_weight_grad=conv_weight_grad, dtype=DTYPES[m.dtype])


def learning_rate_and_b1(config: ml_collections.ConfigDict,
                         steps_per_epoch: int) -> tuple[optax.Schedule, optax.Schedule]:
  """Per-epoch schedules of the authors' code, as functions of the step.

  lr(epoch) = lr * min((num_epochs - epoch) / (num_epochs - anneal_start), 1)
  (code: `lr * min(2 - epoch/100, 1)` for 200 epochs, anneal at 100);
  b1(epoch) = b1 before `anneal_start_epoch`, `b1_anneal` from then on.
  """
  opt = config.optimizer
  anneal_epochs = max(config.num_epochs - opt.anneal_start_epoch, 1)

  def epoch_of(step):
    return step // steps_per_epoch

  def learning_rate(step):
    remaining = (config.num_epochs - epoch_of(step)) / anneal_epochs
    return opt.learning_rate * jnp.clip(remaining, 0.0, 1.0)

  def b1(step):
    return jnp.where(epoch_of(step) < opt.anneal_start_epoch, opt.b1, opt.b1_anneal)

  return learning_rate, b1


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam with epsilon inside the square root (code: m/sqrt(v + 1e-8))."""
  learning_rate, b1 = learning_rate_and_b1(config, steps_per_epoch)
  return optax.inject_hyperparams(optax.adam)(
      learning_rate=learning_rate, b1=b1, b2=config.optimizer.b2,
      eps=config.optimizer.eps, eps_root=config.optimizer.eps_root)


def cross_entropy_and_error(logits: Array, labels: Array) -> tuple[Array, Array]:
  """Per-example softmax cross-entropy and 0/1 error: [B, K], [B] -> [B], [B]."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  error = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  return loss, error


def _step_rngs(step_key: Array, step: Array) -> dict[str, Array]:
  noise, dropout, augment = jax.random.split(jax.random.fold_in(step_key, step), 3)
  return {"noise": noise, "dropout": dropout, "augment": augment}


def train_step(state: TrainState, images: Array, labels: Array, step_key: Array, *,
               model: models.CifarNet, tx: optax.GradientTransformation,
               augment_flip: bool, augment_max_translation: int
               ) -> tuple[TrainState, dict[str, Array]]:
  """One Adam step on a batch. images [B, H, W, C] float32, labels [B] int32.

  Returns the new state and metrics {loss, error, learning_rate} of the batch
  (noise and dropout on, batch statistics), computed before the update.
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
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, param_updates),
      model_state={**state.model_state, **updates},
      opt_state=opt_state)
  metrics = {"loss": loss, "error": error,
             "learning_rate": state.opt_state.hyperparams["learning_rate"]}
  return new_state, metrics


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
# Devices and data placement.


def _data_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def _put_global_batch(host_batch: np.ndarray, sharding: NamedSharding) -> Array:
  """Places a batch that every host holds whole: each host gives its devices
  the rows they hold under `sharding` (all rows where it is replicated)."""
  if jax.process_count() == 1:
    return jax.device_put(host_batch, sharding)
  return jax.make_array_from_callback(host_batch.shape, sharding,
                                      lambda index: host_batch[index])


def _eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """Fixed-size eval batches, the last one zero-padded: yields (x, y, mask)."""
  for start in range(0, len(images), batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    mask = np.ones(len(x), np.float32)
    pad = batch_size - len(x)
    if pad:
      x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
      mask = np.concatenate([mask, np.zeros(pad, np.float32)])
    yield x, y, mask


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
      record = {k: v if isinstance(v, int) else float(v) for k, v in metrics.items()}
      f.write(json.dumps({"step": step, **record}) + "\n")


# ---------------------------------------------------------------------------
# The run.


def initialize_distributed(distributed: ml_collections.ConfigDict) -> None:
  """Joins a multi-host cluster with `jax.distributed.initialize` if enabled.

  Each host then runs the same program; `jax.devices()` spans all hosts and
  every host feeds its own rows of each global batch. On CPU hosts the
  collectives go through gloo.
  """
  if not distributed.enabled:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=distributed.coordinator_address or None,
      num_processes=distributed.num_processes or None,
      process_id=distributed.process_id if distributed.process_id >= 0 else None)


def initialize(config: ml_collections.ConfigDict, model: models.CifarNet,
               tx: optax.GradientTransformation, init_batch: Array,
               init_key: Array) -> TrainState:
  """The data-dependent init (training mode: noise and dropout on, as in the
  authors' code), then the optimizer state. init_batch [N, H, W, C]."""
  params_key, noise_key, dropout_key = jax.random.split(init_key, 3)
  variables = model.init({"params": params_key, "noise": noise_key, "dropout": dropout_key},
                         init_batch, train=True)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=dict(variables), opt_state=tx.init(params))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains and evaluates per `config`, checkpointing into `workdir`.

  Resumes from the newest checkpoint in `workdir` if there is one. Returns
  the final state.
  """
  initialize_distributed(config.distributed)  # Before anything asks for devices.
  logging.info("JAX %s, backend %s, process %d of %d, devices: %s", jax.__version__,
               jax.default_backend(), jax.process_index(), jax.process_count(),
               jax.devices())
  mesh = _data_mesh()
  validate_config(config, jax.device_count())
  check_resumable_config(config, workdir)
  check_workdir(workdir, needed_bytes=0)

  start = time.perf_counter()
  dataset = input_pipeline.load_dataset(config.data)
  logging.info("Loaded %d training and %d test images from %s in %.1f s.",
               len(dataset.train_images), len(dataset.test_images), config.data.source,
               time.perf_counter() - start)
  if len(dataset.train_images) < max(config.batch_size, config.init_batch_size):
    raise ValueError(
        f"The training set has {len(dataset.train_images)} examples, fewer than "
        f"batch_size={config.batch_size} or init_batch_size={config.init_batch_size}.")
  start = time.perf_counter()
  train_x, test_x = input_pipeline.whiten_dataset(dataset, config.data.zca_regularization)
  logging.info("ZCA fitted and applied in %.1f s.", time.perf_counter() - start)
  train_y, test_y = dataset.train_labels, dataset.test_labels

  steps_per_epoch = len(train_x) // config.batch_size
  num_steps = steps_per_epoch * config.num_epochs
  model = create_model(config, num_classes=len(dataset.class_names))
  tx = create_optimizer(config, steps_per_epoch)
  # Init and training draw from separate streams; step keys are
  # fold_in(step_key, step) inside the step.
  init_key, step_key = jax.random.split(jax.random.key(config.seed))

  replicated = NamedSharding(mesh, PartitionSpec())
  data_sharding = NamedSharding(mesh, PartitionSpec("data"))
  init_rows = np.random.default_rng(config.seed).permutation(len(train_x))
  init_batch = train_x[np.sort(init_rows[:config.init_batch_size])]
  init_sharding = data_sharding if len(init_batch) % jax.device_count() == 0 else replicated
  init_fn = jax.jit(functools.partial(initialize, config, model, tx),
                    out_shardings=replicated)
  init_batch = _put_global_batch(init_batch, init_sharding)

  abstract_state = jax.eval_shape(init_fn, init_batch, init_key)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
  check_workdir(workdir, CHECKPOINT_HEADROOM_FACTOR * state_bytes)

  checkpoints = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                           create=True))
  latest = checkpoints.latest_step()
  if latest is not None:
    state = checkpoints.restore(latest, args=ocp.args.StandardRestore(
        jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                     abstract_state)))
    logging.info("Resumed from the checkpoint at step %d in %s.", latest, workdir)
  else:
    start = time.perf_counter()
    state = jax.block_until_ready(init_fn(init_batch, init_key))
    logging.info("Data-dependent init on %d examples: %.1f s (with compile).",
                 config.init_batch_size, time.perf_counter() - start)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))

  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx,
                        augment_flip=config.data.augment_flip,
                        augment_max_translation=config.data.augment_max_translation),
      in_shardings=(replicated, data_sharding, data_sharding, replicated),
      out_shardings=(replicated, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model=model),
                    in_shardings=(replicated, data_sharding, data_sharding, data_sharding),
                    out_shardings=replicated)
  norms_fn = jax.jit(weight_norm_stats, out_shardings=replicated)
  eval_batch_size = -(-config.eval_batch_size // jax.device_count()) * jax.device_count()

  writer = _create_summary_writer(workdir)
  # A fresh start drops every record of an earlier attempt that died before
  # its first checkpoint; a resume keeps those up to the restored step.
  metrics_log = _MetricsLog(workdir, latest if latest is not None else -1)
  log_norms = config.log_norms_every_steps > 0 and bool(
      jax.eval_shape(weight_norm_stats, state.params))  # False: no WN layer.
  if log_norms and latest is None:  # ||v|| and g/||v|| right after the init.
    metrics_log.write(0, jax.device_get(norms_fn(state.params)))
  first_epoch = int(state.step) // steps_per_epoch
  last_good_checkpoint = latest

  def evaluate():
    sums = {"loss": 0.0, "error": 0.0, "count": 0.0}
    for x, y, mask in _eval_batches(test_x, test_y, eval_batch_size):
      out = eval_fn(state, _put_global_batch(x, data_sharding),
                    _put_global_batch(y, data_sharding),
                    _put_global_batch(mask, data_sharding))
      for k in sums:
        sums[k] += float(out[k])
    return {"test_loss": sums["loss"] / sums["count"],
            "test_error": sums["error"] / sums["count"]}

  def check_finite(step, metrics):
    if not np.isfinite(metrics["loss"]):
      where = (f"step {last_good_checkpoint} in {checkpoints.directory}"
               if last_good_checkpoint is not None else "none (no epoch finished)")
      raise NonFiniteLossError(
          f"Non-finite training loss {metrics['loss']} at step {step}. Stopped; "
          f"the last good checkpoint is {where}, left intact. Lower "
          "config.optimizer.learning_rate and start a new workdir or resume.")

  for epoch in range(first_epoch, config.num_epochs):
    epoch_start = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    order = input_pipeline.batch_indices(config.seed, epoch, len(train_x), config.batch_size)
    sums = {"loss": 0.0, "error": 0.0}
    pending = None  # (step, device metrics): read one step late, no stall.
    for i, rows in enumerate(order):
      step = epoch * steps_per_epoch + i
      rows = np.sort(rows)  # Faster gather; order within a batch is irrelevant.
      state, metrics = step_fn(state, _put_global_batch(train_x[rows], data_sharding),
                               _put_global_batch(train_y[rows], data_sharding), step_key)
      if pending is not None:
        done_step, done = jax.device_get(pending)
        check_finite(done_step, done)
        sums["loss"] += done["loss"]
        sums["error"] += done["error"]
      pending = (step, metrics)
      window_steps += 1
      if log_norms and (step + 1) % config.log_norms_every_steps == 0:
        metrics_log.write(step + 1, jax.device_get(norms_fn(state.params)))
      if (step + 1) % config.log_every_steps == 0:
        elapsed = time.perf_counter() - window_start
        images_per_s = window_steps * config.batch_size / elapsed
        eta = (num_steps - step - 1) * elapsed / window_steps
        logging.info(
            "epoch %d step %d/%d loss %.4f lr %.2e %.0f images/s ETA %s",
            epoch, step + 1, num_steps, float(metrics["loss"]),
            float(metrics["learning_rate"]), images_per_s,
            time.strftime("%H:%M:%S", time.gmtime(eta)))
        window_start, window_steps = time.perf_counter(), 0
    done_step, done = jax.device_get(pending)
    check_finite(done_step, done)
    sums["loss"] += done["loss"]
    sums["error"] += done["error"]

    train_time = time.perf_counter() - epoch_start
    summary = {"train_loss": sums["loss"] / len(order),
               "train_error": sums["error"] / len(order),
               "learning_rate": float(done["learning_rate"]),
               "epoch": epoch + 1, **evaluate(),
               "epoch_time_s": train_time,
               "images_per_s": len(order) * config.batch_size / train_time}
    step = int(state.step)
    if writer is not None:
      writer.write_scalars(step, summary)
    metrics_log.write(step, summary)
    logging.info("epoch %d: train loss %.4f error %.4f | test loss %.4f error %.4f "
                 "| %.0f s", epoch + 1, summary["train_loss"], summary["train_error"],
                 summary["test_loss"], summary["test_error"], train_time)
    if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.num_epochs:
      checkpoints.save(step, args=ocp.args.StandardSave(state))
      checkpoints.wait_until_finished()
      last_good_checkpoint = step
  if writer is not None:
    writer.flush()
  checkpoints.close()
  return state
