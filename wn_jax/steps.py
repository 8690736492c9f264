"""The model, the optimizer, and the pure step functions.

`TrainState`; `create_model` (the Linen CifarNet, or its NNX twin with
`model.api='nnx'`) and `create_optimizer` (Adam with the authors' per-epoch
schedules); the one-member `initialize` (the data-dependent init),
`train_step`, `eval_step` and `weight_norm_stats`;
and their sweep versions, which run every member (`over_members`: vmapped
or unrolled) and gather each batch from indices into the on-device data.

Reproducibility: the step's noise, dropout and augmentation keys are
`fold_in(step_key, step)` with the step read from the state, so a resumed
run draws the same numbers as an uninterrupted one.

Everything here is a pure function of arrays and static settings (only
the backend's name picks a default): no shardings, files or logging
(`placement`, `program`, `records`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from wn_jax import models
from wn_jax.data import batches
from wn_jax.nnx.functional import FunctionalCifarNet

Array = jax.Array
PyTree = Any

CONV_WEIGHT_GRADS = ("auto", "xla", "per_tap")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The module system the network is written in: Flax Linen (wn_jax.models) or
# Flax NNX (wn_jax.nnx), trained by the same functional loop.
MODEL_APIS = ("linen", "nnx")


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
# Model, optimizer, and the pure step functions (one member each).


def create_model(config: ml_collections.ConfigDict, num_classes: int
                 ) -> models.CifarNet | FunctionalCifarNet:
  """The Linen CifarNet, or with `model.api='nnx'` its NNX twin behind the
  same init/apply interface (same variables, same numbers)."""
  conv_weight_grad = config.model.conv_weight_grad
  if conv_weight_grad == "auto":  # per-tap matmuls only pay off on XLA:CPU.
    conv_weight_grad = "per_tap" if jax.default_backend() == "cpu" else "xla"
  m = config.model
  model = models.CifarNet(
      num_classes=num_classes, width=m.width, parameterization=m.parameterization,
      data_init=m.data_init, init_scale=m.init_scale, init_order=m.init_order,
      input_noise=m.input_noise,
      dropout_rate=m.dropout_rate, leaky_relu_slope=m.leaky_relu_slope,
      bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
      conv_weight_grad=conv_weight_grad, dtype=DTYPES[m.dtype])
  return FunctionalCifarNet.like(model) if m.api == "nnx" else model


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
  images = batches.augment(rngs.pop("augment"), images, augment_flip,
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
  outputs = [fn(*jax.tree.map(lambda a, k=k: a[k], member_args)) for k in range(num_members)]
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
