"""The paper's five parameterizations for Flax NNX, behind one switch.

The NNX twin of `wn_jax.layers.parameterization`: `NormalizedConv` and
`NormalizedDense` build 'normal', 'wn', 'bn', 'mobn' or 'wn_mobn' (and the
inference-only 'folded') from one string, out of the layers of `plain`,
`weight_norm` and `batch_norm`, with the sublayer names of the Linen scopes.
Holds no layer math of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wn_jax import parameterizations
from wn_jax.nnx.batch_norm import BatchNorm, MeanOnlyBatchNorm
from wn_jax.nnx.plain import Conv2D, PlainConv, PlainDense, default_v_init
from wn_jax.nnx.weight_norm import WeightNorm

Array = jax.Array
Dtype = Any
Padding = str | Sequence[tuple[int, int]]


class _Normalized(nnx.Module):
  """Base of `NormalizedConv`/`NormalizedDense`: `linear`, then `norm`."""

  def _build(self, make_wn_layer, make_plain, make_folded, features, *,
             parameterization, init_scale, data_init, bn_momentum, bn_epsilon,
             rngs):
    self.parameterization = parameterization
    if parameterization == parameterizations.FOLDED:
      self.linear = make_folded()
      self.norm = nnx.data(None)
      return
    parameterizations.check_parameterization(parameterization)
    weight_norm = parameterization in ("wn", "wn_mobn")
    batch_norm = parameterization in ("bn", "mobn", "wn_mobn")
    if weight_norm:
      self.linear = WeightNorm(make_wn_layer(), feature_axes=-1,
                               use_bias=not batch_norm, init_scale=init_scale,
                               v_init=default_v_init, rngs=rngs)
    elif parameterization == "bn":
      # Authors' BatchNormLayer: kernel ~ N(0, 0.05), no data-dependent init.
      self.linear = make_plain(use_bias=False, data_init=False,
                               kernel_init=default_v_init)
    else:
      self.linear = make_plain(use_bias=not batch_norm, data_init=data_init,
                               init_scale=init_scale)
    if parameterization == "bn":
      self.norm = BatchNorm(features, momentum=bn_momentum, epsilon=bn_epsilon)
    elif batch_norm:
      self.norm = MeanOnlyBatchNorm(features, momentum=bn_momentum)
    else:
      self.norm = nnx.data(None)

  def __call__(self, x: Array, *, train: bool) -> Array:
    y = self.linear(x)
    if self.norm is not None:
      y = self.norm(y, use_running_average=not train)
    return y


class NormalizedConv(_Normalized):
  """A 2-D conv in one of the paper's parameterizations, chosen by a string.

  NNX twin of `wn_jax.layers.NormalizedConv`.

  `parameterization`: 'normal' (`PlainConv`, frozen data-init scale), 'wn'
  (`WeightNorm(Conv2D)`), 'bn' (`PlainConv` without bias, N(0, 0.05), then
  `BatchNorm`), 'mobn' (`PlainConv` without bias, then `MeanOnlyBatchNorm`),
  'wn_mobn' (`WeightNorm(Conv2D)` without bias, then `MeanOnlyBatchNorm`),
  'folded' (inference only, written by `fold`: a `Conv2D` with kernel and
  bias). Sublayers `linear` and `norm` hold the variables under the same
  names as the Linen layer's scopes. Call as `layer(x, train=...)`.
  Input `[batch, height, width, in_features]`.
  """

  def __init__(self, in_features: int, features: int, kernel_size: tuple[int, int],
               *, strides: tuple[int, int] = (1, 1), padding: Padding = "SAME",
               parameterization: str = "wn", init_scale: float = 1.0,
               data_init: bool = True, conv_weight_grad: str = "xla",
               bn_momentum: float = 0.9, bn_epsilon: float = 1e-6,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.in_features, self.features = in_features, features
    self.kernel_size, self.strides, self.padding = tuple(kernel_size), tuple(strides), padding
    self.dtype = dtype
    conv = dict(strides=strides, padding=padding, dtype=dtype, rngs=rngs)
    self._build(
        lambda: Conv2D(in_features, features, kernel_size, use_bias=False,
                       weight_grad=conv_weight_grad, **conv),
        lambda **kw: PlainConv(in_features, features, kernel_size,
                               conv_weight_grad=conv_weight_grad, **conv, **kw),
        lambda: Conv2D(in_features, features, kernel_size, **conv),
        features, parameterization=parameterization, init_scale=init_scale,
        data_init=data_init, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
        rngs=rngs)


class NormalizedDense(_Normalized):
  """A dense layer in one of the paper's parameterizations (see `NormalizedConv`).

  NNX twin of `wn_jax.layers.NormalizedDense`.

  'wn' is `WeightNorm(nnx.Linear)`; 'folded' an nnx.Linear. Input `[..., in]`.
  """

  def __init__(self, in_features: int, features: int, *, parameterization: str = "wn",
               init_scale: float = 1.0, data_init: bool = True,
               bn_momentum: float = 0.9, bn_epsilon: float = 1e-6,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.in_features, self.features, self.dtype = in_features, features, dtype
    self._build(
        lambda: nnx.Linear(in_features, features, use_bias=False, dtype=dtype,
                           rngs=rngs),
        lambda **kw: PlainDense(in_features, features, dtype=dtype, rngs=rngs, **kw),
        lambda: nnx.Linear(in_features, features, dtype=dtype, rngs=rngs),
        features, parameterization=parameterization, init_scale=init_scale,
        data_init=data_init, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
        rngs=rngs)

