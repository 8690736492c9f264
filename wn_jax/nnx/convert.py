"""Linen variables <-> the NNX model, and folding an NNX model for inference.

`from_linen(model, variables)` loads the variables of `wn_jax.models.CifarNet`
(`{'params', 'batch_stats', 'frozen'}`, e.g. a restored checkpoint) into the
NNX `CifarNet` of the same configuration; `to_linen(model)` gives them back,
so a checkpoint trained on either side is usable on the other. The layers
keep their variable names (`linear/v`, `norm/mean`, ...); only the layer
names differ: Linen's `NormalizedConv_i` is NNX's `convs/i`, and
`NormalizedDense_0` is `dense`. The collection follows the variable type:
`nnx.Param` <-> 'params', `nnx.BatchStat` <-> 'batch_stats', `Frozen` <->
'frozen'.

`fold(model)` is `wn_jax.fold` for the NNX model: every Normalized layer
becomes a plain conv / dense layer (kernel and bias) computing the same
eval-mode function, through the same `parameterizations.fold_layer`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wn_jax import ops, parameterizations
from wn_jax.nnx import models
from wn_jax.nnx.batch_norm import MeanOnlyBatchNorm
from wn_jax.nnx.parameterization import NormalizedConv, NormalizedDense
from wn_jax.nnx.plain import Frozen, PlainConv, PlainDense, default_v_init
from wn_jax.nnx.recurrent import LSTMCell
from wn_jax.nnx.weight_norm import WeightNorm

PyTree = Any

COLLECTIONS = ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats"),
               (Frozen, "frozen"))


def _collection(variable: nnx.Variable) -> str:
  for kind, name in COLLECTIONS:
    if isinstance(variable, kind):
      return name
  raise TypeError(f"No Linen collection for a {type(variable).__name__}.")


def _linen_path(path: tuple) -> tuple[str, ...]:
  if path[0] == "convs":
    return (f"NormalizedConv_{path[1]}", *map(str, path[2:]))
  if path[0] == "dense":
    return ("NormalizedDense_0", *map(str, path[1:]))
  raise ValueError(f"No Linen name for the NNX variable at {path}.")


def _variables(model: nnx.Module) -> Iterator[tuple[str, tuple[str, ...], nnx.Variable]]:
  """(collection, Linen path, variable) for every variable of `model`."""
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Variable):
      yield _collection(node), _linen_path(path), node


def to_linen(model: nnx.Module) -> dict[str, PyTree]:
  """The NNX CifarNet's variables as Linen `CifarNet` variables (new arrays)."""
  variables: dict[str, Any] = {}
  for collection, path, variable in _variables(model):
    node = variables.setdefault(collection, {})
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = jnp.asarray(variable[...])
  return variables


def from_linen(model: nnx.Module, variables: Mapping[str, PyTree]) -> None:
  """Loads Linen `CifarNet` variables into the NNX `model`, in place.

  Raises ValueError when a variable is missing on either side or has
  another shape (e.g. a model of another width or parameterization).
  """
  flat = {}
  for collection, tree in variables.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      flat[(collection, *(k.key for k in path))] = leaf
  used = set()
  for collection, path, variable in _variables(model):
    key = (collection, *path)
    if key not in flat:
      raise ValueError(f"from_linen: the Linen variables have no {'/'.join(key)}.")
    value = flat[key]
    if np.shape(value) != variable.shape:
      raise ValueError(f"from_linen: {'/'.join(key)} has shape {np.shape(value)}, "
                       f"the NNX model's {variable.shape}.")
    variable.set_value(jnp.asarray(value, variable.dtype))
    used.add(key)
  unused = sorted("/".join(k) for k in flat.keys() - used)
  if unused:
    raise ValueError(f"from_linen: the NNX model has no place for {unused}.")


def _values(module: nnx.Module | None, kind: type, names: tuple[str, ...]) -> dict:
  return {name: getattr(module, name)[...] for name in names
          if isinstance(getattr(module, name, None), kind)}


def fold(model: nnx.Module) -> nnx.Module:
  """A folded copy of an NNX model; `model` is not changed.

  A model written against the switch (a `parameterization` field and
  `NormalizedConv`/`NormalizedDense` layers, no 'wn' `LSTMCell`, e.g.
  `CifarNet`): every such
  layer of the copy gets parameterization 'folded', its `linear` a plain
  `Conv2D` / nnx.Linear holding the kernel and bias of `parameterizations.fold_layer`
  (w = g v/||v||, the frozen scale and both batch norms folded in) and its
  `norm` gone. Any other model built from the public layers: every
  `WeightNorm` becomes a `FoldedLayer` (the wrapped layer with kernel
  g v/||v||, and the bias b), every data-initialised `PlainDense` /
  `PlainConv` takes its frozen scale into its kernel, every
  `MeanOnlyBatchNorm` becomes a `Bias` (b minus the running mean), every
  'wn' `LSTMCell` the 'normal' cell of `fold_lstm`'s params; other modules
  are kept. Either way the copy holds no v, g, frozen scale or running mean
  of those layers and computes the model's eval-mode function (to float32
  rounding).
  """
  parameterization = getattr(model, "parameterization", None)
  if parameterization == parameterizations.FOLDED:
    raise ValueError("The model is already folded.")
  folded = nnx.clone(model)
  nodes = [node for _, node in nnx.iter_graph(folded)]
  found = [node for node in nodes if isinstance(node, (NormalizedConv, NormalizedDense))]
  # The switch's 'folded' kind has no LSTM cell: a model with a 'wn' cell
  # folds in the second form.
  has_wn_cell = any(isinstance(node, LSTMCell) and node.parameterization == "wn"
                    for node in nodes)
  if parameterization is None or not found or has_wn_cell:
    return _fold_any(folded, type(model).__name__)
  parameterizations.check_parameterization(parameterization)
  for layer in found:
    linear = _values(layer.linear, nnx.Param, ("v", "g", "b", "kernel"))
    frozen = _values(layer.linear, Frozen, ("scale",)).get("scale")
    norm_params = _values(layer.norm, nnx.Param, ("scale", "b")) or None
    norm_stats = _values(layer.norm, nnx.BatchStat, ("mean", "var")) or None
    plain = parameterizations.fold_layer(layer.parameterization, linear, norm_params,
                               norm_stats, frozen, getattr(model, "bn_epsilon", 1e-6))
    if isinstance(layer, NormalizedConv):
      new = NormalizedConv(
          layer.in_features, layer.features, layer.kernel_size, strides=layer.strides,
          padding=layer.padding, parameterization=parameterizations.FOLDED,
          dtype=layer.dtype, rngs=nnx.Rngs(0))
    else:
      new = NormalizedDense(layer.in_features, layer.features,
                                   parameterization=parameterizations.FOLDED,
                                   dtype=layer.dtype, rngs=nnx.Rngs(0))
    new.linear.kernel.set_value(plain["kernel"])
    new.linear.bias.set_value(plain["bias"])
    layer.linear, layer.norm = new.linear, new.norm
    layer.parameterization = parameterizations.FOLDED
  folded.parameterization = parameterizations.FOLDED
  return folded


class FoldedLayer(nnx.Module):
  """A folded `WeightNorm`: the wrapped layer with kernel w = g v/||v|| and
  no bias of its own, then the bias. Call it as the wrapped layer."""

  def __init__(self, layer: nnx.Module, bias: jax.Array):
    self.layer = layer
    self.bias = nnx.Param(bias)

  def __call__(self, *args, **kwargs) -> jax.Array:
    y = self.layer(*args, **kwargs)
    return y + self.bias[...].astype(y.dtype)


class Bias(nnx.Module):
  """A folded `MeanOnlyBatchNorm` in eval mode: x + (b - running mean)."""

  def __init__(self, bias: jax.Array, dtype: Any = None):
    self.bias = nnx.Param(bias)
    self.dtype = dtype

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    del use_running_average  # eval mode only
    dtype = self.dtype or x.dtype
    return x.astype(dtype) + self.bias[...].astype(dtype)


def _folded_node(node: nnx.Module) -> nnx.Module | None:
  """The folded form of one layer (None: not a layer that folds)."""
  if isinstance(node, WeightNorm):
    w = parameterizations.plain_layer({"v": node.v[...], "g": node.g[...]}, node.feature_axes,
                                      norm_epsilon=node.norm_epsilon)[0]["kernel"]
    layer = nnx.merge(node.layer_graphdef, nnx.State({node.kernel_name: nnx.Param(w)}))
    bias = node.b[...] if node.b is not None else jnp.zeros(node.feature_shape, node.g.dtype)
    return FoldedLayer(layer, bias)
  if isinstance(node, MeanOnlyBatchNorm):
    mean = node.mean[...]
    bias = node.b[...] - mean if node.b is not None else -mean
    return Bias(bias.astype(mean.dtype), node.dtype)
  if isinstance(node, LSTMCell) and node.parameterization == "wn":
    params = {name: value[...] for name, value in vars(node).items()
              if isinstance(value, nnx.Param)}
    plain_params = parameterizations.plain_layer(params)[0]
    cell = LSTMCell(node.v.shape[0], node.features, parameterization="normal",
                    peepholes=node.peepholes, param_dtype=node.param_dtype, rngs=nnx.Rngs(0))
    for name, value in plain_params.items():
      getattr(cell, name).set_value(value)
    return cell
  return None


def _fold_any(folded: nnx.Module, name: str) -> nnx.Module:
  """`fold`'s second form, on the copy `folded`, in place."""
  count = 0
  for path, node in list(nnx.iter_graph(folded)):
    if isinstance(node, (PlainDense, PlainConv)) and node.scale is not None:
      node.kernel.set_value(node.kernel[...] * node.scale[...].astype(node.kernel.dtype))
      node.scale = nnx.data(None)
      node.data_init = False
      count += 1
      continue
    new = _folded_node(node)
    if new is None:
      continue
    if not path:
      return new  # the model is itself one layer
    parent = folded
    for key in path[:-1]:
      parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
      parent[path[-1]] = new
    else:
      setattr(parent, path[-1], new)
    count += 1
  if not count:
    raise ValueError(f"fold found no layer to fold in {name} (no WeightNorm, data-initialised "
                     "PlainDense/PlainConv, MeanOnlyBatchNorm or 'wn' LSTMCell).")
  return folded


def draw_as_linen(model: nnx.Module, params_key: jax.Array) -> None:
  """Redraws the NNX CifarNet's directions as the Linen CifarNet draws them.

  Every Normalized layer's `v` (weight norm) or `kernel` (plain layers) is
  drawn from the key Linen's `init` gives the layer's 'linear' scope
  (`models.linen_rng(params_key, 'NormalizedConv_3', 'linear', 1)`), with
  the same initializer (N(0, 0.05) for `wn`, `wn_mobn` and `bn`, Glorot
  uniform for `normal` and `mobn`), and `g` is reset to ||v||. So
  `model.init({'params': key, ...})` of the Linen network and this plus
  `wn_jax.nnx.data_init` start from the same point.
  """
  for path, layer in nnx.iter_graph(model):
    if not isinstance(layer, (NormalizedConv, NormalizedDense)):
      continue
    linear = layer.linear
    weight_norm = isinstance(linear, WeightNorm)
    variable = linear.v if weight_norm else linear.kernel
    init = (default_v_init if layer.parameterization in ("wn", "wn_mobn", "bn")
            else nnx.initializers.glorot_uniform())
    key = models.linen_rng(params_key, _linen_path(path)[0], "linear", 1)
    variable.set_value(init(key, variable.shape, variable.dtype))
    if weight_norm:
      norm = ops.direction_norm(linear.v[...], linear.feature_axes, linear.norm_epsilon)
      linear.g.set_value(norm.reshape(linear.g.shape).astype(linear.g.dtype))
