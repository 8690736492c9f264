"""The parameterizations' names and variable-tree transforms, shared by the
Linen layers (`wn_jax.layers`) and the NNX layers (`wn_jax.nnx`): no module
system here, beneath both.

Names: the five parameterizations (and the inference-only 'folded'), the
init orders, v's initial draw, the frozen-scale collection and the two
readings of `normal`. Transforms of variable trees: `plain_layer` (the one
weight-normalized -> plain transform of a layer), `plain_from_weight_norm`
(of a params tree), `normal_from_weight_norm` (a `wn` network's variables
as the `normal` one's), `with_normal_weights`
(the direct reading), `fold_layer` (one layer into a plain kernel and
bias). The array math they use is `wn_jax.ops`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from wn_jax.ops import NORM_EPSILON, direction_norm, weight_normalized_kernel
from wn_jax.rnn_ops import fold_lstm

Array = jax.Array

# Authors' code: v ~ N(0, 0.05) for weight norm and for batch norm's kernel.
default_v_init = jax.nn.initializers.normal(stddev=0.05)


# How the data-dependent init extends to a deep network (see `WeightNorm`).
INIT_ORDERS = ("sequential", "independent")


def check_init_order(init_order: str) -> None:
  """Raises ValueError naming the valid choices for an unknown init order."""
  if init_order not in INIT_ORDERS:
    raise ValueError(
        f"Unknown init_order {init_order!r}; valid ones are "
        f"{', '.join(INIT_ORDERS)}.")


PARAMETERIZATIONS = ("normal", "wn", "bn", "mobn", "wn_mobn")
# The inference-only layer kind `wn_jax.fold` produces: plain nn.Conv /
# nn.Dense with kernel and bias, no normalization (not a training choice).
FOLDED = "folded"


def check_parameterization(parameterization: str, folded: bool = False) -> None:
  """Raises ValueError naming the valid choices for an unknown name;
  `folded`: a model's check, which also takes `FOLDED` (written by fold)."""
  if folded and parameterization == FOLDED:
    return
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(
        f"Unknown parameterization {parameterization!r}; valid ones are "
        f"{', '.join(PARAMETERIZATIONS)}.")


# The un-normalized twin of each weight-normalized parameterization.
NORMAL_TWINS = {"wn": "normal", "wn_mobn": "mobn"}


def plain_layer(params: Mapping[str, Array], feature_axes: int | tuple[int, ...] = -1,
                keep_scale: bool = False, norm_epsilon: float = NORM_EPSILON,
                dtype: Any = None) -> tuple[dict[str, Array], Array | None]:
  """One weight-normalized layer's params as its plain twin's: the one
  WN -> plain transform (DRAW's and the VAE's `normal` start, `fold`).

  - {v, g[, b]} (WNDense, WNConv, `WeightNorm` around any layer; v's output
    units on `feature_axes`, g their shape): {kernel: g v/||v|| (eq. 2),
    computed in float32, in `dtype` (default v's)[, b]} and scale None; with `keep_scale`, {kernel: v[, b]} and
    the scale s = g/||v|| [g.shape], so s * (x . kernel) = x . (g v/||v||)
    (the frozen-scale `normal`).
  - A weight-normalized LSTM cell {v, recurrent_v, g[, recurrent_g], bias,
    peephole_*}: `fold_lstm`'s params, scale None.

  Returns:
    (the plain layer's params, its frozen scale or None).
  """
  if "recurrent_v" in params:
    if keep_scale:
      raise ValueError("plain_layer: an LSTM cell has no frozen-scale form (keep_scale).")
    return fold_lstm(dict(params)), None
  if "v" not in params or "g" not in params:
    raise ValueError(f"plain_layer: no 'v' and 'g' in the params (keys {sorted(params)}): "
                     "not a weight-normalized layer.")
  v, g = params["v"], params["g"]
  bias = {"b": params["b"]} if "b" in params else {}
  if keep_scale:
    scale = (g / direction_norm(v, feature_axes, norm_epsilon).reshape(g.shape)).astype(g.dtype)
    return {"kernel": v, **bias}, scale
  kernel = weight_normalized_kernel(v, g, feature_axes, norm_epsilon).astype(dtype or v.dtype)
  return {"kernel": kernel, **bias}, None


def is_weight_normalized(node: Any) -> bool:
  """Whether a params subtree is one weight-normalized layer (`plain_layer`)."""
  return isinstance(node, Mapping) and ("recurrent_v" in node or ("v" in node and "g" in node))


def plain_from_weight_norm(params: Mapping[str, Any], keep_scale: bool = False,
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Every weight-normalized layer of a params tree as its plain twin
  (`plain_layer`, output units last), every other leaf as it is.

  Returns:
    (params, scales): with `keep_scale`, scales is the tree of
    {'scale': g/||v||} at each converted layer's path (the `FROZEN`
    collection of the `normal` network); otherwise {}.
  Raises ValueError when the tree holds no weight-normalized layer.
  """
  scales: dict[str, Any] = {}
  found = []

  def convert(tree, path):
    if is_weight_normalized(tree):
      found.append(path)
      plain, scale = plain_layer(tree, keep_scale=keep_scale)
      if scale is not None:
        node = scales
        for key in path:
          node = node.setdefault(key, {})
        node["scale"] = scale
      return plain
    if isinstance(tree, Mapping):
      return {key: convert(value, path + (key,)) for key, value in tree.items()}
    return tree

  plain_params = convert(params, ())
  if not found:
    raise ValueError("plain_from_weight_norm: no weight-normalized layer in the params.")
  return plain_params, scales


def normal_from_weight_norm(variables: dict[str, Any]) -> dict[str, Any]:
  """The variables of the `normal` (or `mobn`) network computing the same
  function as the given `wn` (or `wn_mobn`) variables (paper section 3:
  "initialise in terms of v and g, then train w directly").

  Every weight-normalized layer {'v', 'g'[, 'b']} of 'params' becomes the
  plain layer {'kernel': v[, 'b']} with the frozen per-unit scale
  `g / ||v||` in the `FROZEN` collection at the same path
  (`plain_from_weight_norm` with `keep_scale`), so
  `scale * conv(x, kernel) + b = conv(x, g v / ||v||) + b`: the same v draw
  and the same function (to float32 rounding), and training then moves
  w = scale * kernel directly. Other variables are kept.
  """
  params, frozen = plain_from_weight_norm(variables["params"], keep_scale=True)
  return {**variables, "params": params, FROZEN: frozen}


# Variables the data-dependent init sets and training never changes (the
# frozen per-unit scale of the paper's `normal` parameterization). They live
# outside 'params' so no optimizer ever sees them.
FROZEN = "frozen"

# The two readings of the paper's data-initialised `normal` parameterization
# (section 3), for `normal` and `mobn` with the data-dependent init:
#   'scaled': y = s * (x kernel) + b, the data-init scale s frozen and the
#     kernel trained (the authors' CIFAR code, `no_norm`/`InitLayer`); an
#     Adam-type step moves each element of w = s kernel by about s * lr.
#   'direct': the init's s folded into the kernel (w = s kernel, then s = 1)
#     and w trained itself ("train w directly"): a step moves each element of
#     w by about lr, whatever the unit's scale.
# Both compute the same function at step 0.
NORMAL_WEIGHTS = ("scaled", "direct")


def check_normal_weights(normal_weights: str) -> None:
  """Raises ValueError naming the two readings for an unknown one."""
  if normal_weights not in NORMAL_WEIGHTS:
    raise ValueError(f"normal_weights must be one of {NORMAL_WEIGHTS} (the frozen-scale or "
                     f"the direct reading of `normal`), got {normal_weights!r}.")


def with_normal_weights(variables: dict[str, Any], normal_weights: str) -> dict[str, Any]:
  """The variables of a data-initialised network in one reading of `normal`.

  'scaled' returns them as they are. 'direct' multiplies every plain
  layer's kernel [..., out] by its frozen scale s [out] (the `FROZEN`
  collection at the kernel's path) and sets s to 1: the same function, and
  the optimizer now moves w = s kernel itself. Variables without a frozen
  scale (wn, bn, no data init) are returned as they are.
  """
  check_normal_weights(normal_weights)
  if normal_weights == "scaled" or FROZEN not in variables:
    return variables

  def fold(params, frozen):
    if "scale" in frozen:
      scale = frozen["scale"]
      kernel = params["kernel"]
      return ({**params, "kernel": (kernel * scale.astype(kernel.dtype)).astype(kernel.dtype)},
              {**frozen, "scale": jnp.ones_like(scale)})
    pairs = {key: fold(params[key], sub) for key, sub in frozen.items()}
    return ({**params, **{k: p for k, (p, _) in pairs.items()}},
            {k: f for k, (_, f) in pairs.items()})

  params, frozen = fold(dict(variables["params"]), dict(variables[FROZEN]))
  return {**variables, "params": params, FROZEN: frozen}


def dense(x: Array, w: Array) -> Array:
  """x [..., in] @ w [in, out] -> [..., out]."""
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def fold_layer(
    parameterization: str,
    linear: Mapping[str, Array],
    norm_params: Mapping[str, Array] | None = None,
    norm_stats: Mapping[str, Array] | None = None,
    frozen_scale: Array | None = None,
    bn_epsilon: float = 1e-6,
    norm_epsilon: float = NORM_EPSILON,
) -> dict[str, Array]:
  """One Normalized layer's variables -> {'kernel', 'bias'} of a plain layer.

  Args:
    parameterization: one of `PARAMETERIZATIONS`.
    linear: params of the 'linear' sublayer ({v, g[, b]} or {kernel[, b]});
      kernel/v [..., out], the output units on the last axis.
    norm_params: params of the 'norm' sublayer (BN: scale, b; mean-only: b).
    norm_stats: its 'batch_stats' (mean; BN also var).
    frozen_scale: the `normal`/`mobn` data-init scale [out], if any.
    bn_epsilon: `BatchNorm.epsilon` of the `bn` layers.
    norm_epsilon: the epsilon inside ||v|| of the WN layers.

  Returns:
    {'kernel': [..., out], 'bias': [out]}, float32: eval-mode
    y = x . kernel + bias equals the layer's y.
  """
  check_parameterization(parameterization)
  if parameterization in ("wn", "wn_mobn"):
    kernel = plain_layer(linear, norm_epsilon=norm_epsilon, dtype=jnp.float32)[0]["kernel"]
  else:
    kernel = linear["kernel"].astype(jnp.float32)
    if frozen_scale is not None:
      kernel = kernel * frozen_scale.astype(jnp.float32)
  out = kernel.shape[-1]
  bias = linear["b"].astype(jnp.float32) if "b" in linear else jnp.zeros((out,), jnp.float32)
  if parameterization in ("mobn", "wn_mobn"):
    bias = bias + norm_params["b"].astype(jnp.float32) - norm_stats["mean"]
  elif parameterization == "bn":
    multiplier = norm_params["scale"].astype(jnp.float32) * lax.rsqrt(
        norm_stats["var"].astype(jnp.float32) + bn_epsilon)
    kernel = kernel * multiplier
    bias = (bias - norm_stats["mean"]) * multiplier + norm_params["b"].astype(jnp.float32)
  return {"kernel": kernel, "bias": bias}
