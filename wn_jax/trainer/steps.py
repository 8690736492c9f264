"""The train state and the pure step functions, for any task.

`TrainState`; the one-member `initialize` (the data-dependent init through
`task.init_variables`), `train_step` (`task.train_loss`), `eval_step`
(`task.eval_sums`) and `weight_norm_stats`; and their sweep versions,
which run every member (`over_members`: vmapped or unrolled) and gather
each batch from indices into the on-device data. The task (a module of
`wn_jax.tasks`) and the config arrive bound by `functools.partial`; the
functions here know no task.

Reproducibility: the step's keys (one per name in `task.RNG_NAMES`) are
split from `fold_in(step_key, step)` with the step read from the state, so
a resumed run draws the same numbers as an uninterrupted one.

Everything here is a pure function of arrays and static settings: no
shardings, files or logging (`placement`, `program`, `records`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

Array = jax.Array
PyTree = Any


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
# The pure step functions of one member, for any task (`wn_jax.tasks`).


def _step_rngs(step_key: Array, step: Array, names: tuple[str, ...]) -> dict[str, Array]:
  """One key per random stream of the task, from `fold_in(step_key, step)`."""
  return dict(zip(names, jax.random.split(jax.random.fold_in(step_key, step), len(names))))


Optimizer = Callable[[Array], optax.GradientTransformation]  # base lr -> optimizer


def initialize(init_batch: PyTree, init_key: Array, init_scale: Array,
               learning_rate: Array, *, task: ModuleType, config: ml_collections.ConfigDict,
               model: Any, optimizer: Optimizer, data_init: Array | None = None,
               ema: bool = False) -> TrainState:
  """The data-dependent init of one member (`task.init_variables`), then its
  optimizer state.

  init_batch: the task's batch (arrays [N, ...]); `init_scale` and
  `learning_rate` are scalars (traced in a sweep). `data_init`: None uses
  `model.data_init`; a boolean scalar (traced in a sweep that mixes both)
  selects between the data-dependent init and `g = ||v||, b = 0` of the
  same draw of `v`. `ema`: start a moving average of the parameters at
  their initial values.
  """
  names = ("params",) + tuple(task.INIT_RNG_NAMES)
  rngs = dict(zip(names, jax.random.split(init_key, len(names))))
  model = model.clone(init_scale=init_scale)
  if data_init is None:
    variables = task.init_variables(config, model, init_batch, rngs)
  else:
    with_data = task.init_variables(config, model.clone(data_init=True), init_batch, rngs)
    without = task.init_variables(config, model.clone(data_init=False), init_batch, rngs)
    if jax.tree.structure(with_data) != jax.tree.structure(without):
      raise ValueError(
          f"A sweep cannot mix data_init=True and False for parameterization "
          f"{model.parameterization!r}: its variables differ (the frozen scale of "
          "the data-dependent init); launch the two as separate runs.")
    variables = jax.tree.map(lambda a, b: jnp.where(data_init, a, b), with_data, without)
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=dict(variables),
                    opt_state=optimizer(learning_rate).init(params),
                    nonfinite_step=jnp.full((), -1, jnp.int32),
                    ema_params=params if ema else None)


def train_step(state: TrainState, batch: PyTree, step_key: Array, learning_rate: Array, *,
               task: ModuleType, config: ml_collections.ConfigDict, model: Any,
               optimizer: Optimizer, ema_decay: float = 0.0
               ) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer step of one member on a batch.

  batch: the task's batch (arrays [B, ...]); `learning_rate` the member's
  base learning rate (scalar). Returns the new state and the batch's
  metrics (`task.TRAIN_METRICS`, computed before the update, in training
  mode) and 'learning_rate'. If the state carries `ema_params`, they
  become `ema_decay * ema + (1 - ema_decay) * params` with the updated
  params.
  """
  rngs = _step_rngs(step_key, state.step, tuple(task.RNG_NAMES))

  def loss_fn(params):
    return task.train_loss(config, model, params, state.model_state, batch, rngs)

  (_, (metrics, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  param_updates, opt_state = optimizer(learning_rate).update(
      grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, param_updates)
  new_state = state.replace(
      step=state.step + 1, params=params,
      model_state={**state.model_state, **updates}, opt_state=opt_state,
      ema_params=optax.incremental_update(params, state.ema_params, 1 - ema_decay)
      if state.ema_params is not None else None)
  metrics = {**metrics, "learning_rate": state.opt_state.hyperparams["learning_rate"]}
  return new_state, metrics


def keep_finite(state: TrainState, new_state: TrainState, loss: Array,
                unguarded: tuple[str, ...] = ()) -> TrainState:
  """`new_state`, unless the loss is non-finite or was before: then the
  member keeps `state`'s parameters and statistics for good (only its step
  advances), and `nonfinite_step` records the step where it happened.

  `unguarded`: model-state collections taken from `new_state` whatever the
  loss (a task's `UNGUARDED_COLLECTIONS`: the state of its data stream,
  such as an environment and its replay, which selecting would copy every
  step)."""
  healthy = state.nonfinite_step < 0
  update = healthy & jnp.isfinite(loss)
  keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(update, new, old))
  model_state = {name: value if name in unguarded else keep(value, state.model_state[name])
                 for name, value in new_state.model_state.items()}
  return new_state.replace(
      params=keep(new_state.params, state.params),
      model_state=model_state,
      opt_state=keep(new_state.opt_state, state.opt_state),
      ema_params=keep(new_state.ema_params, state.ema_params),
      nonfinite_step=jnp.where(healthy & ~update, state.step, state.nonfinite_step))


def eval_step(state: TrainState, batch: PyTree, mask: Array, key: Array, *,
              task: ModuleType, config: ml_collections.ConfigDict, model: Any
              ) -> dict[str, Array]:
  """`task.eval_sums` of a masked batch (deterministic mode): sums of
  `task.EVAL_METRICS` and 'count'."""
  return task.eval_sums(config, model, {"params": state.params, **state.model_state},
                        batch, mask, key)


def weight_norm_stats(params: PyTree) -> dict[str, Array]:
  """Mean ||v|| and mean g/||v|| (effective scale) of every WN weight.

  A cheap on-device reduction over the params: two scalars per direction
  `v` with its scale `g` beside it, keyed '<layer path>/v_norm' and
  '<layer path>/g_over_v_norm'; an LSTM cell's recurrent pair
  (`recurrent_v`, `recurrent_g`) adds '<layer path>/recurrent_v_norm' and
  '<layer path>/recurrent_g_over_v_norm'.
  """
  stats = {}
  flat = {tuple(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  for path, v in flat.items():
    prefix = path[-1][:-1]  # '' for v, 'recurrent_' for recurrent_v
    if path[-1] not in ("v", "recurrent_v") or path[:-1] + (prefix + "g",) not in flat:
      continue
    g = flat[path[:-1] + (prefix + "g",)]
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))
    name = "/".join(path[:-1])
    stats[f"{name}/{prefix}v_norm"] = jnp.mean(norm)
    stats[f"{name}/{prefix}g_over_v_norm"] = jnp.mean(g / norm)
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
  outputs = [fn(*jax.tree.map(lambda a, k=k: a[k], member_args)) for k in range(num_members)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)


def gather(data: PyTree, rows: Array) -> PyTree:
  """The examples at `rows` of every array of `data` (a batch)."""
  return jax.tree.map(lambda a: a[rows], data)


def sweep_init(train_data: PyTree, init_rows: Array, init_keys: Array,
               init_scales: Array, learning_rates: Array, data_init: Array | None, *,
               member_loop: str = "auto", **kwargs) -> TrainState:
  """`initialize` for every member: init_rows [M, N] index train_data."""
  def member(rows, key, init_scale, learning_rate, *data_init):
    return initialize(gather(train_data, rows), key, init_scale, learning_rate,
                      data_init=data_init[0] if data_init else None, **kwargs)
  member_args = (init_rows, init_keys, init_scales, learning_rates)
  if data_init is not None:
    member_args += (data_init,)
  return over_members(member, *member_args, member_loop=member_loop)


def sweep_train_step(state: TrainState, train_data: PyTree, epoch_rows: Array,
                     step_keys: Array, learning_rates: Array, *,
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
    new_state, metrics = train_step(state, gather(train_data, batch_rows), step_key,
                                    learning_rate, **kwargs)
    unguarded = getattr(kwargs["task"], "UNGUARDED_COLLECTIONS", ())
    return keep_finite(state, new_state, metrics["loss"], unguarded), metrics
  return over_members(member, state, epoch_rows, step_keys, learning_rates,
                      member_loop=member_loop)


def sweep_eval_step(state: TrainState, test_data: PyTree, rows: Array, mask: Array,
                    eval_keys: Array, *, member_loop: str = "auto",
                    **kwargs) -> dict[str, Array]:
  """`eval_step` of every member on the same test batch, each with its own
  eval key folded with the batch's first row (fixed noise per test image
  from one evaluation to the next): sums [M]."""
  batch = gather(test_data, rows)
  def member(s, key):
    return eval_step(s, batch, mask, jax.random.fold_in(key, rows[0]), **kwargs)
  return over_members(member, state, eval_keys, member_loop=member_loop)
