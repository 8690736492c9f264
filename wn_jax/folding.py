"""Fold a trained model into plain layers for inference and export.

``folded_model, folded_variables = fold(model, variables)`` turns a model
written against the parameterization switch
(`wn_jax.layers.parameterization.NormalizedConv` / `NormalizedDense`, e.g.
`models.CifarNet`) into the same model with every such layer a plain
nn.Conv / nn.Dense (layer kind `FOLDED`), holding one kernel and one bias, that computes the same
eval-mode function (`train=False`):

  wn       w = g v/||v||                     bias = b
  wn_mobn  w = g v/||v||                     bias = b_bn - running_mean
  normal   w = s kernel (frozen scale s)     bias = b
  mobn     w = s kernel                      bias = b_bn - running_mean
  bn       w = m kernel                      bias = b_bn - running_mean m,
           m = scale / sqrt(running_var + bn_epsilon)

(the kernel scaled per output unit, i.e. along its last axis). The folded
variables are only `params` (no `batch_stats`, no `frozen`), and the folded
model runs no normalization, so it is the cheapest form for inference and
exports with `jax.export` as one function of the input (`export_inference`).

Design: a transform of the variable tree plus a clone of the model with
`parameterization='folded'`, rather than a second model definition: the
network is written once, every layer scope keeps its name
(`NormalizedConv_3/linear/{kernel,bias}`), and any model built from the
Normalized layers folds the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from wn_jax.layers import weight_norm
from wn_jax.layers.parameterization import (
  FOLDED,
  check_parameterization,
)

Array = jax.Array
PyTree = Any


def fold_layer(
    parameterization: str,
    linear: Mapping[str, Array],
    norm_params: Mapping[str, Array] | None = None,
    norm_stats: Mapping[str, Array] | None = None,
    frozen_scale: Array | None = None,
    bn_epsilon: float = 1e-6,
    norm_epsilon: float = weight_norm.NORM_EPSILON,
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
    kernel = weight_norm.weight_normalized_kernel(linear["v"], linear["g"], -1, norm_epsilon)
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


def _is_normalized_layer(node: Any) -> bool:
  return isinstance(node, Mapping) and isinstance(node.get("linear"), Mapping)


def fold(model: nn.Module, variables: Mapping[str, PyTree]) -> tuple[nn.Module, dict]:
  """Returns (folded_model, folded_variables) computing model's eval function.

  Args:
    model: a Linen module with a `parameterization` field whose linear
      layers are `NormalizedConv` / `NormalizedDense` (e.g.
      `models.CifarNet`); its `bn_epsilon` (default 1e-6) is used for `bn`.
    variables: its variables ({'params', 'batch_stats'?, 'frozen'?}).

  Returns:
    `model.clone(parameterization='folded')` and {'params': ...} with every
    Normalized layer's subtree replaced by {'linear': {'kernel', 'bias'}}:
    `folded_model.apply(folded_variables, x, train=False)` equals
    `model.apply(variables, x, train=False)` (to float32 rounding).
  """
  parameterization = getattr(model, "parameterization", None)
  if parameterization is None:
    raise TypeError(f"fold needs a model with a `parameterization` field built from "
                    "wn_jax.layers.parameterization.NormalizedConv/NormalizedDense; got "
                    f"{type(model).__name__}.")
  if parameterization == FOLDED:
    raise ValueError("The model is already folded.")
  check_parameterization(parameterization)
  bn_epsilon = getattr(model, "bn_epsilon", 1e-6)
  batch_stats = variables.get("batch_stats", {})
  frozen = variables.get("frozen", {})

  def sub(tree, key):
    return tree.get(key, {}) if isinstance(tree, Mapping) else {}

  def optional(value):
    return None if isinstance(value, Mapping) and not value else value

  found = []

  def walk(params, stats, frozen_tree):
    if _is_normalized_layer(params):
      found.append(True)
      return {"linear": fold_layer(
          parameterization, params["linear"], params.get("norm"),
          optional(sub(stats, "norm")), optional(sub(sub(frozen_tree, "linear"), "scale")),
          bn_epsilon)}
    if not isinstance(params, Mapping):
      return params  # a parameter outside any Normalized layer, kept as is
    return {k: walk(v, sub(stats, k), sub(frozen_tree, k)) for k, v in params.items()}

  folded_params = walk(variables["params"], batch_stats, frozen)
  if not found:
    raise ValueError("fold found no Normalized layer (no 'linear' subtree) in the params.")
  return model.clone(parameterization=FOLDED), {"params": folded_params}


def export_inference(folded_model: nn.Module, folded_variables: Mapping[str, PyTree],
                     input_shape: tuple[int, ...], dtype: Any = jnp.float32) -> bytes:
  """Serialises x -> logits (eval mode, weights baked in) with `jax.export`.

  Load with `jax.export.deserialize(blob).call(x)`. The batch size is fixed
  by `input_shape`.
  """
  def infer(x):
    return folded_model.apply(folded_variables, x, train=False)

  exported = jax.export.export(jax.jit(infer))(jax.ShapeDtypeStruct(input_shape, dtype))
  return exported.serialize()
