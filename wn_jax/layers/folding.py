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

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from wn_jax.layers import weight_norm
from wn_jax.layers.batch_norm import MeanOnlyBatchNorm
from wn_jax.layers.plain import PlainConv, PlainDense
from wn_jax.layers.recurrent import LSTMCell
from wn_jax.layers.weight_norm import WeightNorm
from wn_jax.ops import canonical_axes
from wn_jax.parameterizations import (
  FOLDED,
  FROZEN,
  check_parameterization,
  fold_layer,
  is_weight_normalized,
  plain_layer,
)

Array = jax.Array
PyTree = Any


def _is_normalized_layer(node: Any) -> bool:
  return isinstance(node, Mapping) and isinstance(node.get("linear"), Mapping)


def _has_normalized_layer(params: Any) -> bool:
  return _is_normalized_layer(params) or (isinstance(params, Mapping) and any(
      _has_normalized_layer(sub) for sub in params.values()))


def _layer_parameterization(params: Mapping, norm_stats: Mapping) -> str:
  """The parameterization of one Normalized layer, read from its variables
  (a model may mix them: the DQN's `bn` network has a `normal` head):
  v and g are weight norm, a running variance is batch norm, a running mean
  alone is mean-only batch norm."""
  weight_norm = "v" in params["linear"]
  if "var" in norm_stats:
    return "bn"
  if "mean" in norm_stats:
    return "wn_mobn" if weight_norm else "mobn"
  return "wn" if weight_norm else "normal"


def _has_weight_normalized_cell(params: Any) -> bool:
  """Whether a weight-normalized LSTM cell ({v, recurrent_v, g, ...}) is in
  the params: the switch's 'folded' kind has no cell, so such a model folds
  in the second form (DRAW)."""
  return isinstance(params, Mapping) and ("recurrent_v" in params or any(
      _has_weight_normalized_cell(sub) for sub in params.values()))


def fold(model: nn.Module, variables: Mapping[str, PyTree],
         feature_axes: Mapping[str, Sequence[int]] | None = None) -> tuple[nn.Module, dict]:
  """Returns (folded_model, folded_variables) computing model's eval function.

  Two forms, one call:
  - a model written against the parameterization switch (a
    `parameterization` field, `NormalizedConv` / `NormalizedDense` layers,
    no weight-normalized LSTM cell, e.g. `models.CifarNet`):
    `model.clone(parameterization='folded')`, each
    Normalized layer's subtree replaced by {'linear': {'kernel', 'bias'}}
    (the batch norms folded into the kernel and bias too); its `bn_epsilon`
    (default 1e-6) is used for `bn`;
  - any other model built from the public layers (`models.DRAW` among
    them): a `FoldedModel` of it,
    each weight-normalized layer's {v, g, b} replaced by {kernel: g
    v/||v||, bias: b} (a 'wn' `LSTMCell` by `fold_lstm`'s params; both
    `parameterizations.plain_layer`), each
    data-initialised `PlainDense`/`PlainConv`'s kernel multiplied by its
    frozen scale, each `MeanOnlyBatchNorm` by its bias minus its running
    mean; other layers' variables kept. The feature axes of each
    `WeightNorm` are read from the shapes of v and g (`feature_axes`,
    {'<layer path>': axes}, names them where the shapes cannot), and
    checked against the layer's at the first call.

  Args:
    model: the Linen module.
    variables: its variables ({'params', 'batch_stats'?, 'frozen'?}).
    feature_axes: see above (the second form only).

  Returns:
    (folded_model, folded_variables) with no v, no g, no frozen scale and no
    running mean left: `folded_model.apply(folded_variables, *inputs)`
    equals `model.apply(variables, *inputs)` in eval mode (`train=False`;
    to float32 rounding).
  """
  parameterization = getattr(model, "parameterization", None)
  if parameterization == FOLDED or isinstance(model, FoldedModel):
    raise ValueError("The model is already folded.")
  params = variables.get("params", {})
  if (parameterization is None or not _has_normalized_layer(params)
      or _has_weight_normalized_cell(params)):
    return _fold_any(model, variables, feature_axes)
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
          _layer_parameterization(params, sub(stats, "norm")), params["linear"],
          params.get("norm"),
          optional(sub(stats, "norm")), optional(sub(sub(frozen_tree, "linear"), "scale")),
          bn_epsilon)}
    if not isinstance(params, Mapping):
      return params  # a parameter outside any Normalized layer, kept as is
    return {k: walk(v, sub(stats, k), sub(frozen_tree, k)) for k, v in params.items()}

  folded_params = walk(variables["params"], batch_stats, frozen)
  if not found:
    raise ValueError("fold found no Normalized layer (no 'linear' subtree) in the params.")
  return model.clone(parameterization=FOLDED), {"params": folded_params}


# ---------------------------------------------------------------------------
# Any model built from the public layers: a transform of the variable tree,
# and a wrapper that runs each folded layer as its plain twin.

FeatureAxes = tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]


def _weight_norm_axes(v: Array, g: Array, path: tuple[str, ...]) -> tuple[int, ...]:
  """The feature axes of a WeightNorm's v, read from the shapes of v and g:
  the last axes when they match g (every flax layer's default but a
  ConvTranspose with transpose_kernel), else the only axes that do."""
  n = g.ndim
  if tuple(v.shape[v.ndim - n:]) == tuple(g.shape):
    return tuple(range(v.ndim - n, v.ndim))
  matches = [axes for axes in itertools.combinations(range(v.ndim), n)
             if tuple(v.shape[a] for a in axes) == tuple(g.shape)]
  if len(matches) != 1:
    raise ValueError(f"fold cannot tell the feature axes of the weight-normalized layer at "
                     f"'{'/'.join(path)}' from v {tuple(v.shape)} and g {tuple(g.shape)}; "
                     "pass feature_axes={'<path>': axes}.")
  return matches[0]


def _fold_tree(params: Mapping, stats: Mapping, frozen: Mapping,
               feature_axes: Mapping[str, Sequence[int]], path: tuple[str, ...],
               assumed: dict, found: list) -> tuple[dict, dict]:
  """(folded params, kept batch_stats) of one subtree; see `fold`."""
  if is_weight_normalized(params):  # WeightNorm (WNDense, WNConv, ...) or a 'wn' LSTMCell
    found.append(path)
    if "recurrent_v" in params:
      return plain_layer(params)[0], {}
    v, g = params["v"], params["g"]
    name = "/".join(path)
    axes = (canonical_axes(feature_axes[name], v.ndim) if name in feature_axes
            else _weight_norm_axes(v, g, path))
    assumed[path] = axes
    plain = plain_layer(params, axes)[0]
    return {"kernel": plain["kernel"], "bias": plain.get("b", jnp.zeros(g.shape, g.dtype))}, {}
  if "kernel" in params and "scale" in frozen:  # PlainDense/PlainConv, data-initialised
    found.append(path)
    kernel = params["kernel"]
    return {**params, "kernel": (kernel * frozen["scale"].astype(kernel.dtype))}, {}
  if set(stats) == {"mean"} and set(params) <= {"b"}:  # MeanOnlyBatchNorm
    found.append(path)
    bias = params["b"] - stats["mean"] if "b" in params else -stats["mean"]
    return {"b": bias.astype(stats["mean"].dtype)}, {}
  folded, kept = {}, {}
  for key in dict.fromkeys([*params, *stats]):
    sub_params, sub_stats = params.get(key, {}), stats.get(key, {})
    if not isinstance(sub_params, Mapping) or not isinstance(sub_stats, Mapping):
      # A leaf of a layer that is not folded (the user's own, a BatchNorm): as it is.
      if key in params:
        folded[key] = sub_params
      if key in stats:
        kept[key] = sub_stats
      continue
    sub_params, sub_stats = _fold_tree(sub_params, sub_stats, frozen.get(key, {}),
                                       feature_axes, path + (key,), assumed, found)
    if sub_params:
      folded[key] = sub_params
    if sub_stats:
      kept[key] = sub_stats
  return folded, kept


def _folded_call(assumed: Mapping[tuple[str, ...], tuple[int, ...]]):
  """The interceptor of `FoldedModel`: each folded layer runs as its plain
  twin on the folded variables; every other call as it is."""
  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    if isinstance(module, WeightNorm):
      path = tuple(module.scope.path)
      params = module.variables["params"]
      kernel_ndim = params["kernel"].ndim
      axes = canonical_axes(module.feature_axes if module.feature_axes is not None
                            else weight_norm.default_feature_axes(module.layer), kernel_ndim)
      if assumed.get(path) != axes:
        raise ValueError(
            f"fold took the feature axes {assumed.get(path)} for the weight-normalized "
            f"layer at '{'/'.join(path)}' from the shapes of v and g, but the layer's are "
            f"{axes}: fold again with feature_axes={{'{'/'.join(path)}': {axes}}}.")
      y = module.plain_layer().apply({"params": {module.kernel_name: params["kernel"]}},
                                     *args, **kwargs)
      return y + params["bias"].astype(y.dtype)
    if isinstance(module, LSTMCell) and module.parameterization == "wn":
      plain = LSTMCell(module.features, parameterization="normal", peepholes=module.peepholes,
                       param_dtype=module.param_dtype)
      return plain.apply({"params": module.variables["params"]}, *args, **kwargs)
    if isinstance(module, (PlainDense, PlainConv)) and module.data_init:
      plain = module.clone(parent=None, data_init=False)
      return plain.apply({"params": module.variables["params"]}, *args, **kwargs)
    if isinstance(module, MeanOnlyBatchNorm):
      x = args[0]
      dtype = module.dtype or x.dtype
      return x.astype(dtype) + module.variables["params"]["b"].astype(dtype)
    return next_fun(*args, **kwargs)

  return intercept


class FoldedModel(nn.Module):
  """`fold`'s result for a model built from the public layers: `model` with
  every weight-normalized layer (`WeightNorm`, `WNDense`, `WNConv`,
  `WNConvTranspose`, a 'wn' `LSTMCell`), every data-initialised
  `PlainDense`/`PlainConv` and every `MeanOnlyBatchNorm` run as its plain
  twin on the folded variables, at the same paths; everything else runs as
  it is. It computes the model's eval-mode function (batch norms on their
  running statistics); call it as the model is called.

  `assumed_feature_axes`: the feature axes `fold` took for each WeightNorm,
  checked against the layer's own at the first call.
  """
  model: nn.Module
  assumed_feature_axes: FeatureAxes = ()

  def setup(self):
    nn.share_scope(self, self.model)

  def __call__(self, *args, **kwargs):
    with nn.intercept_methods(_folded_call(dict(self.assumed_feature_axes))):
      return self.model(*args, **kwargs)


def _fold_any(model: nn.Module, variables: Mapping[str, PyTree],
              feature_axes: Mapping[str, Sequence[int]] | None) -> tuple[nn.Module, dict]:
  assumed, found = {}, []
  params, kept = _fold_tree(variables["params"], variables.get("batch_stats", {}),
                            variables.get(FROZEN, {}), dict(feature_axes or {}), (),
                            assumed, found)
  if not found:
    raise ValueError(
        f"fold found no layer to fold in {type(model).__name__}'s variables (no weight-"
        "normalized layer, data-initialised PlainDense/PlainConv or MeanOnlyBatchNorm).")
  folded = {"params": params, **({"batch_stats": kept} if kept else {})}
  return FoldedModel(model, tuple(sorted(assumed.items()))), folded


def export_inference(folded_model: nn.Module, folded_variables: Mapping[str, PyTree],
                     input_shape: tuple[int, ...], dtype: Any = jnp.float32,
                     apply_kwargs: Mapping[str, Any] | None = None) -> bytes:
  """Serialises x -> output (eval mode, weights baked in) with `jax.export`.

  `apply_kwargs` are passed to `folded_model.apply` with x (default
  `{'train': False}`, the package's models; `{}` for a model called as
  `model(x)`). Load with `jax.export.deserialize(blob).call(x)`. The batch
  size is fixed by `input_shape`.
  """
  kwargs = {"train": False} if apply_kwargs is None else dict(apply_kwargs)

  def infer(x):
    return folded_model.apply(folded_variables, x, **kwargs)

  exported = jax.export.export(jax.jit(infer))(jax.ShapeDtypeStruct(input_shape, dtype))
  return exported.serialize()
