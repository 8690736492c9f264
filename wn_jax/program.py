"""A run's program: its data on the devices, its members, its jitted functions.

`load_data` loads and whitens the data set (through the data cache) and
places it, replicated, on every device; a step receives only the indices
of its batch and gathers the images itself. `sweep_members` lists the
members of a sweep (`wn_jax.sweep`), one member for a plain run.
`build_program` binds the step functions of `steps` to the model, the
optimizer and the shardings and jits them once. Building only: the loop,
checkpoints and records are in `train` and `records`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

from wn_jax import steps, sweep
from wn_jax.data import batches, cache
from wn_jax.placement import mesh_sharding, put_global
from wn_jax.steps import TrainState

Array = jax.Array
PyTree = Any


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
  data = cache.load_whitened(config.data)
  logging.info("Loaded %d training and %d test images from %s in %.1f s (data cache: %s, %s).",
               len(data.train_x), len(data.test_x), config.data.source, data.report.load_seconds,
               data.report.cache, data.report.cache_dir)
  if config.data.train_subset:  # ZCA stays the one fitted on the whole training set.
    rows = batches.class_balanced_subset(data.train_y, config.data.train_subset)
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


def member_epoch_rows(members: Members, epoch: int, num_examples: int,
                batch_size: int) -> np.ndarray:
  """int32 [M, steps_per_epoch, B]: each member's batches of `epoch`."""
  # Sorted rows gather faster; the order within a batch does not matter.
  return np.stack([np.sort(batches.batch_indices(int(seed), epoch, num_examples,
                                                         batch_size), axis=1)
                   for seed in members.seeds]).astype(np.int32)


def member_init_rows(members: Members, num_examples: int, init_batch_size: int) -> np.ndarray:
  """int32 [M, init_batch_size]: each member's init batch (its seed's draw)."""
  return np.stack([np.sort(np.random.default_rng(int(seed)).permutation(num_examples)
                           [:init_batch_size]) for seed in members.seeds]).astype(np.int32)


def _eval_rows(num_examples: int, batch_size: int):
  """Fixed-size eval batches of row indices, the last one padded with row 0
  and masked out: yields (rows int32 [batch_size], mask float32 [batch_size])."""
  for start in range(0, num_examples, batch_size):
    rows = np.arange(start, min(start + batch_size, num_examples), dtype=np.int32)
    mask = np.ones(batch_size, np.float32)
    mask[len(rows):] = 0
    yield np.pad(rows, (0, batch_size - len(rows))), mask


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
  model = steps.create_model(config, num_classes=data.num_classes)
  optimizer = functools.partial(steps.create_optimizer, config, steps_per_epoch)
  learning_rates = put_global(members.learning_rates, per_member)
  # Each member's init and training draw from separate streams of its seed;
  # step keys are fold_in(step_key, step) inside the step.
  init_keys, step_keys = jax.jit(
      jax.vmap(lambda seed: tuple(jax.random.split(jax.random.key(seed)))),
      out_shardings=per_member)(put_global(members.seeds, per_member))
  init_rows = member_init_rows(members, num_train, config.init_batch_size)
  init_args = (
      data.train_images,
      put_global(init_rows, sharding("members", "data")
                 if config.init_batch_size % data_devices == 0 else per_member),
      init_keys, put_global(members.init_scales, per_member), learning_rates,
      None if members.data_init is None else put_global(members.data_init, per_member))
  member_loop = config.sweep.member_loop
  init_fn = jax.jit(functools.partial(steps.sweep_init, model=model, optimizer=optimizer,
                                      ema=config.ema_decay > 0, member_loop=member_loop),
                    out_shardings=per_member)
  step_fn = jax.jit(
      functools.partial(steps.sweep_train_step, steps_per_epoch=steps_per_epoch, model=model,
                        optimizer=optimizer, augment_flip=config.data.augment_flip,
                        augment_max_translation=config.data.augment_max_translation,
                        ema_decay=config.ema_decay, member_loop=member_loop),
      in_shardings=(per_member, replicated, replicated, sharding("members", None, "data"),
                    per_member, per_member),
      out_shardings=(per_member, per_member), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(steps.sweep_eval_step, model=model,
                                      member_loop=member_loop),
                    in_shardings=(per_member, replicated, replicated, sharding("data"),
                                  sharding("data")),
                    out_shardings=per_member)
  eval_batch_size = -(-config.eval_batch_size // data_devices) * data_devices
  eval_batches = [(put_global(rows, sharding("data")), put_global(mask, sharding("data")))
                  for rows, mask in _eval_rows(data.test_images.shape[0], eval_batch_size)]
  one_member = jax.eval_shape(lambda *a: jax.tree.map(lambda x: x[0], init_fn(*a)),
                              *init_args)
  has_norms = bool(jax.eval_shape(steps.weight_norm_stats, one_member.params))
  norms_fn = (jax.jit(jax.vmap(steps.weight_norm_stats), out_shardings=per_member)
              if config.log_norms_every_steps > 0 and has_norms else None)
  return Program(mesh, members, data, steps_per_epoch, learning_rates, step_keys,
                 init_fn, init_args, step_fn, eval_fn, eval_batches, norms_fn)
