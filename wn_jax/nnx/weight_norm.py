"""`WeightNorm` for Flax NNX: any layer with a kernel, as w = g v/||v||.

The NNX twin of `wn_jax.layers.weight_norm`: wraps nnx.Linear,
nnx.LinearGeneral, nnx.Conv (any rank, strides, dilation,
feature_group_count), nnx.ConvTranspose, nnx.Einsum and `Conv2D`, and takes
part in `data_init`. The math (||v||, w, the init's g and b) is
`wn_jax.ops`, shared with the Linen wrapper. Holds no batch norm and no
parameterization switch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wn_jax import ops, parameterizations
from wn_jax.nnx.data_init import DataInitLayer
from wn_jax.nnx.plain import Conv2D

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
Padding = str | Sequence[tuple[int, int]]

default_v_init = parameterizations.default_v_init


def default_feature_axes(layer: nnx.Module) -> tuple[int, ...]:
  """The axes of `layer`'s kernel that index its output features.

  nnx.Linear, nnx.Conv (any rank, grouped or not), `Conv2D`: the last axis.
  nnx.LinearGeneral: its `len(out_features)` last axes. nnx.ConvTranspose:
  -1, or -2 with `transpose_kernel=True` (kernel [..., out, in]).
  nnx.Einsum: the kernel axes whose subscripts appear in the output.
  Other modules: ValueError (pass `feature_axes`).
  """
  if isinstance(layer, nnx.LinearGeneral):
    return tuple(range(-len(layer.out_features), 0))
  if isinstance(layer, nnx.ConvTranspose):
    return (-2,) if layer.transpose_kernel else (-1,)
  if isinstance(layer, (nnx.Linear, nnx.Conv, Conv2D)):
    return (-1,)
  if isinstance(layer, nnx.Einsum) and layer.einsum_str is not None:
    kernel_subscripts, output = ops.einsum_kernel_and_output(layer.einsum_str)
    return tuple(i for i, s in enumerate(kernel_subscripts) if s in output)
  raise ValueError(
      f"WeightNorm has no default feature_axes for {type(layer).__name__}; pass "
      "feature_axes=<the axes of its kernel that index the output features>.")


class WeightNorm(DataInitLayer):
  """Weight normalization of any NNX layer with a kernel (paper eq. 2).

  NNX twin of `wn_jax.layers.WeightNorm` (also `wn_jax.WeightNorm`).

  ``WeightNorm(layer, rngs=rngs)(x)`` computes ``layer`` with its kernel
  replaced by ``w = g v/||v||``, ``||v|| = sqrt(sum v^2 + norm_epsilon)``,
  the norm per output unit over every kernel axis but `feature_axes`, and
  then adds the bias ``b``. The wrapped layer is run as a pure function of
  its kernel (`nnx.merge` of its graph with the kernel ``w``): it owns no
  variables here, so the wrapper's state is exactly

    v: the direction, in the layer's own kernel layout: the layer's own
      kernel draw (default, as flax's and PyTorch's weight norm keep the
      layer's init), or drawn by `v_init` from `rngs.params()` (the paper's
      N(0, 0.05) is `default_v_init`, what the named layers use);
    g: the scale, shape = v's feature axes, starting at `g_start` (||v||,
      so w = v, or 1);
    b: the bias, same shape (absent with `use_bias=False`), starting at 0;

  all three `nnx.Param`s. `data_init(model, init_batch)` sets, per unit,
  ``g = init_scale / sqrt(var[t] + epsilon)`` and ``b = -mean[t] g`` from
  ``t = layer(x; v/||v||)`` (statistics over every output axis but the
  feature axes; global under jit with a sharded batch, averaged over
  `axis_name` inside shard_map/pmap).

  `layer` is copied (`nnx.clone`) and the copy's bias dropped; the layer
  passed in is not changed. Its output's last axes must be the feature axes
  in the kernel's order (true for every layer above; an nnx.Einsum must
  write its feature subscripts last).

  Args:
    layer: the module to normalise, e.g. `nnx.Conv(8, 64, (3,),
      feature_group_count=4, rngs=rngs)`.
    init_scale: std of every unit's pre-activation after `data_init`.
    feature_axes: kernel axes that index output units; None = the default
      for the layer type (`default_feature_axes`).
    use_bias: own a bias b; None = whether `layer` has one.
    epsilon: added to var[t] in the init (1e-8, the authors' code).
    norm_epsilon: added to sum v^2 inside ||v|| (`ops.NORM_EPSILON`, 1e-12).
    v_init: initializer of v (key, shape, dtype), drawn from
      `rngs.params()`; None (default) = take the layer's own kernel as v
      (then `rngs` is not needed). The same rule as the Linen `WeightNorm`.
    g_start: g's start before (or without) `data_init`: 'norm' (||v||, so
      w = v) or 'one' (1); as `wn_jax.layers.WeightNorm`'s.
    kernel_name: the name of the layer's kernel attribute.
    param_dtype: dtype of g and b (v keeps the kernel's dtype).
    axis_name: mapped axis for the init statistics inside shard_map/pmap.
    rngs: draws v.
  """

  sets_scale = True

  def __init__(
      self,
      layer: nnx.Module,
      *,
      init_scale: float = 1.0,
      feature_axes: int | Sequence[int] | None = None,
      use_bias: bool | None = None,
      epsilon: float = 1e-8,
      norm_epsilon: float = ops.NORM_EPSILON,
      v_init: Initializer | None = None,
      kernel_name: str = "kernel",
      g_start: str = "norm",
      param_dtype: Dtype = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs | None = None,
  ):
    self._start_init_mode()
    ops.check_g_start(g_start)
    kernel = getattr(layer, kernel_name, None)
    if not isinstance(kernel, nnx.Param):
      raise ValueError(f"WeightNorm: {type(layer).__name__} has no nnx.Param "
                       f"named {kernel_name!r}; set kernel_name.")
    if use_bias is None:
      use_bias = getattr(layer, "bias", None) is not None
    axes = ops.canonical_axes(
        feature_axes if feature_axes is not None else default_feature_axes(layer),
        kernel.ndim)
    if isinstance(layer, nnx.Einsum):
      _check_einsum_layout(layer, axes)

    layer = nnx.clone(layer)
    if getattr(layer, "bias", None) is not None:
      layer.bias = nnx.data(None)
    if hasattr(layer, "use_bias"):
      layer.use_bias = False
    graphdef, state = nnx.split(layer)
    paths = [path for path, _ in nnx.to_flat_state(state)]
    if paths != [(kernel_name,)]:
      raise ValueError(
          f"WeightNorm wraps layers whose only variable (without bias) is the "
          f"parameter {kernel_name!r}; {type(layer).__name__} has {paths}.")

    if v_init is None:
      v = kernel[...]
    else:
      if rngs is None:
        raise ValueError("WeightNorm needs rngs to draw v (or v_init=None to "
                         "take the layer's own kernel).")
      v = v_init(rngs.params(), kernel.shape, kernel.dtype)
    self.feature_axes = axes
    self.feature_shape = tuple(kernel.shape[a] for a in axes)
    self.kernel_name = kernel_name
    self.g_start = g_start
    self.init_scale = init_scale
    self.epsilon = epsilon
    self.norm_epsilon = norm_epsilon
    self.axis_name = axis_name
    self.layer_type = type(layer).__name__
    self.layer_graphdef = graphdef
    self.v = nnx.Param(v)
    norm = ops.direction_norm(v, axes, norm_epsilon).reshape(self.feature_shape)
    self.g = nnx.Param(ops.start_scale(norm, g_start).astype(param_dtype))
    self.b = (nnx.Param(jnp.zeros(self.feature_shape, param_dtype)) if use_bias
              else nnx.data(None))

  def _run(self, kernel: Array, args, kwargs) -> Array:
    """The wrapped layer with `kernel`, as a pure function of it."""
    state = nnx.State({self.kernel_name: nnx.Param(kernel)})
    y = nnx.merge(self.layer_graphdef, state)(*args, **kwargs)
    n = len(self.feature_shape)
    if y.shape[y.ndim - n:] != self.feature_shape:
      raise ValueError(
          f"WeightNorm: the output of {self.layer_type} has shape {y.shape}, "
          f"whose last axes are not the features {self.feature_shape} (kernel "
          f"{self.v.shape}, feature_axes {self.feature_axes}); the feature axes "
          "must come last in the output.")
    return y

  def __call__(self, *args, **kwargs) -> Array:
    v = self.v[...]
    if self.initializing:
      norm = ops.direction_norm(v, self.feature_axes, self.norm_epsilon)
      # t = layer(x; v/||v||) on the init batch; g, b standardise it.
      t = self._run((v.astype(jnp.float32) / norm).astype(v.dtype), args, kwargs)
      g, b = ops.data_init_scale_and_bias(
          t, self.init_scale, self.epsilon, self.axis_name, len(self.feature_shape),
          layer=f"wn_jax.nnx.WeightNorm({self.layer_type})")
      self.g.set_value(g.astype(self.g.dtype))
      if self.b is not None:
        self.b.set_value(b.astype(self.b.dtype))
      if self._init_order == "independent":
        # Pass on the un-initialised output: w = v, no bias.
        return t * norm.reshape(self.feature_shape).astype(t.dtype)
      y = t * self.g[...].astype(t.dtype)  # = layer(x; g v/||v||): one pass
    else:
      w = ops.weight_normalized_kernel(v, self.g[...], self.feature_axes,
                                       self.norm_epsilon)
      y = self._run(w.astype(v.dtype), args, kwargs)
    if self.b is not None:
      y = y + self.b[...].astype(y.dtype)
    return y


def _check_einsum_layout(layer: nnx.Einsum, axes: tuple[int, ...]) -> None:
  if layer.einsum_str is not None:
    ops.check_einsum_feature_layout(layer.einsum_str, axes, "nnx.Einsum")

