"""`WeightNorm`: weight normalization of any Linen layer with a kernel (eq. 2).

``w = g v / ||v||`` with ``||v||`` per output unit (`direction_norm`,
`weight_normalized_kernel`, written in `wn_jax.ops`), the data-dependent
init inside ``model.init``, and the default feature axes of the flax
layers. The named layers built on it are in `wn_layers`; parameterization
choices are in `parameterization`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from wn_jax.layers.data_init import check_init_order, data_init_scale_and_bias, runs_data_init
from wn_jax.layers.plain import Conv2D
from wn_jax.ops import (
  NORM_EPSILON,
  canonical_axes,
  check_einsum_feature_layout,
  check_g_start,
  direction_norm,
  einsum_kernel_and_output,
  start_scale,
  weight_normalized_kernel,
)

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]


def default_feature_axes(layer: nn.Module) -> tuple[int, ...]:
  """The axes of `layer`'s kernel that index its output features.

  nn.Dense, nn.Conv (any rank, grouped or not), `Conv2D`: the last axis.
  nn.DenseGeneral: its `len(features)` last axes. nn.ConvTranspose: the
  output channel, -1, or -2 with `transpose_kernel=True` (kernel
  [..., out, in]). nn.Einsum: the kernel axes whose subscripts appear in the
  output. Other modules: ValueError (pass `feature_axes`).
  """
  if isinstance(layer, nn.DenseGeneral):
    features = layer.features
    n = 1 if isinstance(features, int) else len(features)
    return tuple(range(-n, 0))
  if isinstance(layer, nn.ConvTranspose):
    return (-2,) if layer.transpose_kernel else (-1,)
  if isinstance(layer, (nn.Dense, nn.Conv, Conv2D)):
    return (-1,)
  if isinstance(layer, nn.Einsum) and layer.einsum_str is not None:
    kernel_subscripts, output = einsum_kernel_and_output(layer.einsum_str)
    return tuple(i for i, s in enumerate(kernel_subscripts) if s in output)
  raise ValueError(
      f"WeightNorm has no default feature_axes for {type(layer).__name__}; pass "
      "feature_axes=<the axes of its kernel that index the output features>.")


def _fields(layer: nn.Module) -> set[str]:
  """The layer's dataclass fields: probing any other attribute of a
  setup()-style layer would run its setup and register a second kernel."""
  return {f.name for f in dataclasses.fields(layer)}


class WeightNorm(nn.Module):
  """Weight normalization of any Linen layer with a kernel (paper eq. 2).

  Linen twin of `wn_jax.nnx.WeightNorm`.

  ``WeightNorm(layer)(x)`` computes ``layer`` with its kernel replaced by

      w = g * v / ||v||,   ||v|| = sqrt(sum v^2 + norm_epsilon),

  the norm taken per output unit over every kernel axis but `feature_axes`,
  and then adds the bias ``b``: ``y = layer_w(x) + b``. The wrapped layer is
  run as a pure function of its kernel (``layer.apply``); it is given no
  bias (``use_bias=False``) and owns no variables. Works for nn.Dense,
  nn.DenseGeneral, nn.Conv of any rank (strides, dilation,
  feature_group_count), nn.ConvTranspose, nn.Einsum and `Conv2D`; any
  layer whose only parameter is its kernel works with explicit
  `feature_axes`.

  Parameters (all in this module's own scope, nothing under the wrapped
  layer's name):
    v: the direction, in the wrapped layer's own kernel layout (nn.Dense
      [in, out], nn.Conv [*window, in/groups, out], nn.ConvTranspose
      [*window, in, out] or [*window, out, in] with transpose_kernel).
    g: the scale, shape = v's feature axes (one per output unit; per output
      channel for a grouped conv).
    b: the bias, same shape as g (absent with `use_bias=False`).
  Unlike flax.linen.WeightNorm, which keeps the wrapped layer's
  `kernel`/`bias` under the layer's name and adds a '<layer>/kernel/scale'
  parameter in a second scope, v, g and b sit side by side, so
  `params[...]['v']` is the direction and its siblings are its scale and bias.

  The data-dependent init (section 2.2) is ``model.init``: with
  `data_init=True` the first call computes t = layer(x) with kernel
  v/||v|| and no bias on the init batch, and sets, per unit,

      g = init_scale / sqrt(var[t] + epsilon),   b = -mean[t] g,

  the statistics over every output axis but the feature axes (batch and
  spatial; global under jit with a sharded batch, averaged over `axis_name`
  inside shard_map/pmap). It then returns g t + b, reusing t: the init costs
  one forward pass. `data_init=False`: b = 0 and g starts at `g_start`:
  ||v|| ('norm', the default: w = v at start) or 1 ('one').

  `init_order` says what a layer passes on during a data-dependent init:
    'sequential' (the authors' code): its initialised output g t + b, so
      every later layer takes its statistics on the outputs of the
      already-initialised layers before it.
    'independent': its un-initialised output, layer(x) with w = v and no
      bias (= ||v|| t), so every layer takes its statistics on one forward
      pass of the un-initialised network (g = ||v||, b = 0 everywhere). The
      stored g, b are the same formula; only what the next layer sees differs.
  Outside `init` both orders compute the same function.

  Layout requirement: the last axes of the layer's output must be the
  feature axes, in the kernel's order (true for every layer above; an
  nn.Einsum must write its feature subscripts last). A mismatch is a
  ValueError.

  Attributes:
    layer: the module to normalise (e.g. `nn.Conv(64, (3,), feature_group_count=4)`).
    feature_axes: kernel axes that index output units; None = the default
      for the layer type (`default_feature_axes`).
    use_bias: add b; None = the wrapped layer's own `use_bias`.
    init_scale: std of every unit's pre-activation after the init.
    data_init: True: `model.init` is the data-dependent init.
    g_start: g's start without the data-dependent init (`data_init=False`):
      'norm' (g = ||v||, so w = v: the plain layer's start, as the authors'
      Keras wrapper) or 'one' (g = 1, every unit's w of norm 1, the default
      of the authors' Lasagne WeightNormLayer). Unused with the data init.
    init_order: 'sequential' or 'independent', see above.
    epsilon: added to var[t] in the init (a constant unit gets g =
      init_scale/sqrt(epsilon), finite). 1e-8 as in the authors' code.
    norm_epsilon: added to sum v^2 inside ||v|| (`NORM_EPSILON`, 1e-12).
    v_init: initializer of v (key, shape, dtype); None = the wrapped layer's
      own kernel initializer, drawn by the layer itself.
    kernel_name: name of the wrapped layer's kernel parameter.
    param_dtype: dtype of g and b (v takes the wrapped layer's param_dtype
      when it has one, else this).
    axis_name: mapped axis for the init statistics inside shard_map/pmap.
  """
  layer: nn.Module
  feature_axes: int | Sequence[int] | None = None
  use_bias: bool | None = None
  init_scale: float = 1.0
  data_init: bool = True
  init_order: str = "sequential"
  epsilon: float = 1e-8
  norm_epsilon: float = NORM_EPSILON
  v_init: Initializer | None = None
  g_start: str = "norm"
  kernel_name: str = "kernel"
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  def __post_init__(self):
    if not isinstance(self.layer, nn.Module):
      hint = (" It is a Flax NNX module: wrap it with wn_jax.nnx.WeightNorm."
              if isinstance(self.layer, nnx.Module) else "")
      raise TypeError(f"wn_jax.WeightNorm wraps a Linen module, got "
                      f"{type(self.layer).__name__}.{hint}")
    super().__post_init__()

  @nn.compact
  def __call__(self, *args, **kwargs) -> Array:
    check_init_order(self.init_order)
    check_g_start(self.g_start)
    layer = self.plain_layer()
    use_bias = (self.use_bias if self.use_bias is not None
                else (self.layer.use_bias if "use_bias" in _fields(self.layer) else True))
    structs = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in args]
    kernel_struct = self._kernel_struct(layer, structs, kwargs)
    axes = canonical_axes(
        self.feature_axes if self.feature_axes is not None
        else default_feature_axes(self.layer), len(kernel_struct.shape))
    feature_shape = tuple(kernel_struct.shape[a] for a in axes)
    if isinstance(self.layer, nn.Einsum):
      self._check_einsum_layout(axes)

    def v_init(key, shape, dtype):
      if self.v_init is not None:
        return self.v_init(key, shape, dtype)
      return layer.lazy_init(key, *structs, **kwargs)["params"][self.kernel_name]

    v = self.param("v", v_init, kernel_struct.shape, kernel_struct.dtype)

    def run(kernel):
      y = layer.apply({"params": {self.kernel_name: kernel}}, *args, **kwargs)
      if y.shape[y.ndim - len(feature_shape):] != feature_shape:
        raise ValueError(
            f"WeightNorm: the output of {type(self.layer).__name__} has shape "
            f"{y.shape}, whose last axes are not the features {feature_shape} "
            f"(kernel {kernel_struct.shape}, feature_axes {axes}); the "
            "feature axes must come last in the output.")
      return y

    norm = direction_norm(v, axes, self.norm_epsilon)
    norm_features = norm.reshape(feature_shape)
    data_init = runs_data_init(self)
    if data_init:
      # t = layer(x; v/||v||) on the init batch; g, b standardise it.
      t = run((v.astype(jnp.float32) / norm).astype(v.dtype))
      g_init, b_init = data_init_scale_and_bias(
          t, self.init_scale, self.epsilon, self.axis_name, len(feature_shape),
          layer=self._name())
    else:
      g_init = start_scale(norm_features, self.g_start)
      b_init = jnp.zeros(feature_shape, jnp.float32)

    g = self.param("g", lambda *_: g_init.astype(self.param_dtype), feature_shape)
    b = (self.param("b", lambda *_: b_init.astype(self.param_dtype), feature_shape)
         if use_bias else None)
    if data_init and self.init_order == "independent":
      # Pass on the un-initialised output: w = v, no bias.
      return t * norm_features.astype(t.dtype)
    if data_init:  # layer(x; g v/||v||) = g t: reuse t (one forward pass).
      y = t * g.astype(t.dtype)
    else:
      y = run(weight_normalized_kernel(v, g, axes, self.norm_epsilon).astype(v.dtype))
    if b is not None:
      y = y + b.astype(y.dtype)
    return y

  @nn.nowrap
  def plain_layer(self) -> nn.Module:
    """The wrapped layer, unbound and without its bias: what runs with the
    kernel w (here, and in `wn_jax.fold`'s folded model)."""
    updates = {"use_bias": False} if "use_bias" in _fields(self.layer) else {}
    return self.layer.clone(parent=None, **updates)

  @nn.nowrap
  def _name(self) -> str:
    path = '/'.join(self.scope.path)
    return f"WeightNorm({type(self.layer).__name__})" + (f" at '{path}'" if path else "")

  def _kernel_struct(self, layer, structs, kwargs) -> jax.ShapeDtypeStruct:
    """Shape and dtype of the wrapped layer's kernel, evaluated abstractly."""
    variables = jax.eval_shape(
        lambda *a: layer.init(jax.random.key(0), *a, **kwargs), *structs)
    params = dict(variables.get("params", {}))
    others = [c for c in variables if c != "params"]
    if self.kernel_name not in params or set(params) != {self.kernel_name} or others:
      raise ValueError(
          f"WeightNorm wraps layers whose only variable (without bias) is the "
          f"parameter {self.kernel_name!r}; {type(self.layer).__name__} has "
          f"params {sorted(params)} and collections {sorted(variables)}. Set "
          "kernel_name, or wrap a layer with a single kernel.")
    return params[self.kernel_name]

  def _check_einsum_layout(self, axes: tuple[int, ...]) -> None:
    if self.layer.einsum_str is not None:
      check_einsum_feature_layout(self.layer.einsum_str, axes, "nn.Einsum")
