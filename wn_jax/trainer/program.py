"""A run's program: its data on the devices, its members, its jitted functions.

`load_data` loads the task's data set (`task.load_data`) and places it,
replicated, on every device; a step receives only the indices of its
batch and gathers the examples itself. `sweep_members` lists the
members of a sweep (`wn_jax.trainer.sweep`), one member for a plain run.
`build_program` binds the step functions of `steps` to the task, its
model, its optimizer and the shardings and jits them once. Building only: the loop,
checkpoints and records are in `train` and `records`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from wn_jax.data import batches
from wn_jax.tasks.base import num_examples
from wn_jax.trainer import steps, sweep
from wn_jax.trainer.placement import mesh_sharding, put_global
from wn_jax.trainer.steps import TrainState

Array = jax.Array
PyTree = Any

EVAL_KEY_INDEX = 2**32 - 1  # fold_in index of the eval key: no step reaches it


class DeviceData(NamedTuple):
  """The task's data set (`wn_jax.tasks.TaskData`), replicated on every device.

  train / test: name -> array [num_examples, ...] (train {} for a task
  without a training set); info, steps_per_epoch: the task's.
  """
  train: dict[str, Array]
  test: dict[str, Array]
  info: dict[str, Any]
  steps_per_epoch: int | None = None

  @property
  def num_train(self) -> int:
    """Training examples; 0 for a task without a training set."""
    return num_examples(self.train) if self.train else 0

  @property
  def num_test(self) -> int:
    return num_examples(self.test)


def load_data(config: ml_collections.ConfigDict, task: ModuleType, mesh: Mesh) -> DeviceData:
  """The task's data (`task.load_data`), placed on the devices."""
  data = task.load_data(config)
  num_examples(data.test)
  if not data.train:
    if not isinstance(data.steps_per_epoch, int) or data.steps_per_epoch < 1:
      raise ValueError(f"{task.__name__}.load_data gave no training set and steps_per_epoch="
                       f"{data.steps_per_epoch!r}: a task without a training set must say "
                       "how many updates an epoch has (a positive int).")
  elif data.steps_per_epoch is not None:
    raise ValueError(f"{task.__name__}.load_data gave a training set and steps_per_epoch="
                     f"{data.steps_per_epoch}: with a training set an epoch is "
                     "num_train // batch_size; give one or the other.")
  else:
    num_train = num_examples(data.train)
    if num_train < max(config.batch_size, config.init_batch_size):
      raise ValueError(
          f"The training set has {num_train} examples, fewer than "
          f"batch_size={config.batch_size} or init_batch_size={config.init_batch_size}.")
  replicated = mesh_sharding(mesh)
  def place(arrays):
    return {name: put_global(a, replicated) for name, a in arrays.items()}
  return DeviceData(place(data.train), place(data.test), dict(data.info), data.steps_per_epoch)


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
                batch_size: int, shuffle: bool = True,
                steps_per_epoch: int | None = None) -> np.ndarray:
  """int32 [M, steps_per_epoch, B]: each member's batches of `epoch`, in its
  seed's permutation of the epoch (`shuffle`) or in file order (every
  epoch the same batches, as the reference DRAW code). Without a training
  set (num_examples 0) [M, steps_per_epoch, 0]: every batch empty."""
  if num_examples == 0:
    return np.zeros((len(members.seeds), steps_per_epoch, 0), np.int32)
  if not shuffle:
    steps = num_examples // batch_size
    rows = np.arange(steps * batch_size, dtype=np.int32).reshape(steps, batch_size)
    return np.broadcast_to(rows, (len(members.seeds), *rows.shape)).copy()
  # Sorted rows gather faster; the order within a batch does not matter.
  return np.stack([np.sort(batches.batch_indices(int(seed), epoch, num_examples,
                                                         batch_size), axis=1)
                   for seed in members.seeds]).astype(np.int32)


def member_init_rows(members: Members, num_examples: int, init_batch_size: int) -> np.ndarray:
  """int32 [M, init_batch_size]: each member's init batch (its seed's draw);
  [M, 0] without a training set."""
  if num_examples == 0:
    return np.zeros((len(members.seeds), 0), np.int32)
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
  task: ModuleType
  data: DeviceData
  model: Any
  steps_per_epoch: int
  learning_rates: Array  # [M]
  step_keys: Array  # [M] keys
  eval_keys: Array  # [M] keys, the same at every evaluation
  init_fn: Callable[..., TrainState]
  init_args: tuple
  step_fn: Callable[..., tuple[TrainState, dict[str, Array]]]
  eval_fn: Callable[..., dict[str, Array]]
  eval_batches: list[tuple[Array, Array]]  # (rows, mask), each [eval batch]
  # The fixed test subset evaluated every `eval_every_steps` (its first
  # `eval_subset` examples); empty when that is off.
  subset_eval_batches: list[tuple[Array, Array]]
  norms_fn: Callable[[PyTree], dict[str, Array]] | None  # None: no WN layer.

  def sharding(self, *spec) -> NamedSharding:
    return mesh_sharding(self.mesh, *spec)


def ema_decay(config: ml_collections.ConfigDict, steps_per_epoch: int) -> float:
  """The per-step decay of the parameters' moving average: `config.ema_decay`,
  or from a horizon in epochs, `1 - 1 / (ema_epochs * steps_per_epoch)`
  (the paper's "exponential moving average over approximately 10 epochs")."""
  if config.ema_epochs > 0:
    return 1.0 - 1.0 / (config.ema_epochs * steps_per_epoch)
  return config.ema_decay


def build_program(config: ml_collections.ConfigDict, mesh: Mesh, members: Members,
                  task: ModuleType, data: DeviceData) -> Program:
  """The model, the keys and the jitted init, step, eval and norms."""
  sharding = functools.partial(mesh_sharding, mesh)
  replicated, per_member = sharding(), sharding("members")
  data_devices = mesh.shape["data"]
  num_train = data.num_train
  steps_per_epoch = data.steps_per_epoch or num_train // config.batch_size
  model = task.create_model(config, data.info)
  optimizer = functools.partial(task.create_optimizer, config, steps_per_epoch)
  bound = dict(task=task, config=config, model=model)
  learning_rates = put_global(members.learning_rates, per_member)
  # Each member's init and training draw from separate streams of its seed;
  # step keys are fold_in(step_key, step) inside the step. The eval key is
  # the step stream folded with 2^32 - 1, which no step reaches.
  init_keys, step_keys = jax.jit(
      jax.vmap(lambda seed: tuple(jax.random.split(jax.random.key(seed)))),
      out_shardings=per_member)(put_global(members.seeds, per_member))
  eval_keys = jax.jit(jax.vmap(lambda key: jax.random.fold_in(key, EVAL_KEY_INDEX)),
                      out_shardings=per_member)(step_keys)
  init_rows = member_init_rows(members, num_train, config.init_batch_size)
  init_args = (
      data.train,
      put_global(init_rows, sharding("members", "data")
                 if init_rows.shape[1] % data_devices == 0 else per_member),
      init_keys, put_global(members.init_scales, per_member), learning_rates,
      None if members.data_init is None else put_global(members.data_init, per_member))
  member_loop = config.sweep.member_loop
  use_ema = config.ema_decay > 0 or config.ema_epochs > 0
  init_fn = jax.jit(functools.partial(steps.sweep_init, optimizer=optimizer, ema=use_ema,
                                      member_loop=member_loop, **bound),
                    out_shardings=per_member)
  step_fn = jax.jit(
      functools.partial(steps.sweep_train_step, steps_per_epoch=steps_per_epoch,
                        optimizer=optimizer, ema_decay=ema_decay(config, steps_per_epoch),
                        member_loop=member_loop, **bound),
      in_shardings=(per_member, replicated, sharding("members", None, "data"),
                    per_member, per_member),
      out_shardings=(per_member, per_member), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(steps.sweep_eval_step, member_loop=member_loop, **bound),
                    in_shardings=(per_member, replicated, sharding("data"),
                                  sharding("data"), per_member),
                    out_shardings=per_member)
  eval_batch_size = -(-config.eval_batch_size // data_devices) * data_devices
  def placed_eval_batches(num_examples):
    return [(put_global(rows, sharding("data")), put_global(mask, sharding("data")))
            for rows, mask in _eval_rows(num_examples, eval_batch_size)]
  eval_batches = placed_eval_batches(data.num_test)
  subset_eval_batches = (placed_eval_batches(min(config.eval_subset or data.num_test,
                                                 data.num_test))
                         if config.eval_every_steps > 0 else [])
  one_member = jax.eval_shape(lambda *a: jax.tree.map(lambda x: x[0], init_fn(*a)),
                              *init_args)
  has_norms = bool(jax.eval_shape(steps.weight_norm_stats, one_member.params))
  norms_fn = (jax.jit(jax.vmap(steps.weight_norm_stats), out_shardings=per_member)
              if config.log_norms_every_steps > 0 and has_norms else None)
  return Program(mesh, members, task, data, model, steps_per_epoch, learning_rates,
                 step_keys, eval_keys, init_fn, init_args, step_fn, eval_fn, eval_batches,
                 subset_eval_batches, norms_fn)
