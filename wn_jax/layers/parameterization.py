"""The parameterization switch: the paper's five layer kinds from one string.

`NormalizedConv` / `NormalizedDense` build 'normal', 'wn', 'bn', 'mobn' or
'wn_mobn' (and the inference-only 'folded') from the layer families in the
other modules, so a network is written once against this switch
(`wn_jax.models`). The layers themselves are not defined here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from wn_jax.layers.batch_norm import BatchNorm, MeanOnlyBatchNorm
from wn_jax.layers.plain import MaskDegrees, MaskedDense, PlainConv, PlainDense
from wn_jax.layers.wn_layers import WNConv, WNDense
from wn_jax.parameterizations import (  # noqa: F401 (NORMAL_TWINS, normal_from_weight_norm: re-exported)
  FOLDED,
  NORMAL_TWINS,
  PARAMETERIZATIONS,
  check_init_order,
  check_parameterization,
  default_v_init,
  normal_from_weight_norm,
)

Array = jax.Array
Dtype = Any
Padding = str | Sequence[tuple[int, int]]

def _parameterized(
    parent: nn.Module,
    x: Array,
    train: bool,
    layer_kwargs: dict[str, Any],
    conv: bool,
) -> Array:
  """Builds and applies the linear layer (+ norm) for `parent.parameterization`."""
  if parent.parameterization == FOLDED:
    # Inference form written by `wn_jax.fold`: a plain nn.Conv / nn.Dense
    # holding the folded kernel and bias; the same in train and eval mode.
    # A masked layer keeps its mask (a plain kernel need not hold the zeros).
    if conv:
      layer = nn.Conv(parent.features, parent.kernel_size, strides=parent.strides,
                      padding=parent.padding, dtype=parent.dtype, name="linear")
    elif getattr(parent, "mask_degrees", None) is not None:
      layer = MaskedDense(parent.features, parent.mask_degrees, dtype=parent.dtype,
                          name="linear")
    else:
      layer = nn.Dense(parent.features, dtype=parent.dtype, name="linear")
    return layer(x)
  check_parameterization(parent.parameterization)
  check_init_order(parent.init_order)
  weight_norm = parent.parameterization in ("wn", "wn_mobn")
  batch_norm = parent.parameterization in ("bn", "mobn", "wn_mobn")
  kwargs = dict(layer_kwargs, features=parent.features, use_bias=not batch_norm,
                dtype=parent.dtype)
  if parent.parameterization == "bn":
    # Authors' BatchNormLayer: kernel ~ N(0, 0.05), no data-dependent init.
    kwargs.update(data_init=False, kernel_init=default_v_init)
  else:
    kwargs.update(data_init=parent.data_init, init_scale=parent.init_scale,
                  init_order=parent.init_order)
  if parent.kernel_init is not None:
    kwargs.update({"v_init" if weight_norm else "kernel_init": parent.kernel_init})
  if weight_norm:
    kwargs.update(g_start=parent.g_start)
  if conv:
    layer = WNConv if weight_norm else PlainConv
  else:
    layer = WNDense if weight_norm else PlainDense
    if parent.mask_degrees is not None:
      kwargs.update(mask_degrees=parent.mask_degrees)
  y = layer(**kwargs, name="linear")(x)
  if parent.parameterization == "bn":
    y = BatchNorm(use_running_average=not train, momentum=parent.bn_momentum,
                  epsilon=parent.bn_epsilon, name="norm")(y)
  elif batch_norm:
    y = MeanOnlyBatchNorm(use_running_average=not train,
                          momentum=parent.bn_momentum, name="norm")(y)
  return y


class NormalizedConv(nn.Module):
  """A 2-D conv in one of the paper's parameterizations, chosen by a string.

  Linen twin of `wn_jax.nnx.NormalizedConv`.

  `parameterization` (paper results table, authors' `--norm_type`):
    'normal':  `PlainConv` with a frozen data-initialised scale and bias
               (`data_init=False`: plain conv, Glorot init, no scale).
    'wn':      `WNConv`.
    'bn':      `PlainConv` without bias, kernel N(0, 0.05), then `BatchNorm`
               (never data-initialised, as in the authors' code).
    'mobn':    `PlainConv` without bias (frozen data-init scale), then
               `MeanOnlyBatchNorm`.
    'wn_mobn': `WNConv` without bias (data init sets only `g`), then
               `MeanOnlyBatchNorm`.
    'folded':  inference only, written by `wn_jax.fold`: a plain nn.Conv
               with the folded kernel and bias (params `linear/kernel`,
               `linear/bias`), no normalization, `train` ignored.
  `data_init=False` switches the data-dependent init off for every
  parameterization (WN then starts at `g = ||v||`, `b = 0`).
  `init_order` ('sequential' or 'independent', see `WeightNorm`) says what
  the layer passes on during the data-dependent init.
  `kernel_init`: the init of the kernel (`normal`, `mobn`, `bn`) or of `v`
  (`wn`, `wn_mobn`); None keeps each kind's default (Glorot uniform,
  N(0, 0.05)).
  `g_start`: where `g` starts without the data init ('norm' = ||v|| or
  'one'; `WeightNorm`); used by `wn` and `wn_mobn` only.
  Call as `layer(x, train=...)`; `train` selects batch vs running statistics.
  Input `[batch, height, width, in]`, output `[batch, h', w', features]`.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  parameterization: str = "wn"
  init_scale: float = 1.0
  data_init: bool = True
  init_order: str = "sequential"
  conv_weight_grad: str = "xla"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  kernel_init: Any = None
  g_start: str = "norm"

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    layer_kwargs = dict(kernel_size=self.kernel_size, strides=self.strides,
                        padding=self.padding,
                        conv_weight_grad=self.conv_weight_grad)
    return _parameterized(self, x, train, layer_kwargs, conv=True)


class NormalizedDense(nn.Module):
  """A dense layer in one of the paper's parameterizations (see `NormalizedConv`).

  Linen twin of `wn_jax.nnx.NormalizedDense` (which has no `mask_degrees`).

  `mask_degrees`: an autoregressive (MADE) kernel mask
  (`wn_jax.layers.plain.MaskDegrees`), the same in every parameterization.
  `kernel_init`: as `NormalizedConv`'s (the DRAW model draws every weight
  from N(0, 0.01^2)).
  Input `[..., in]`, output `[..., features]`.
  """
  features: int
  parameterization: str = "wn"
  init_scale: float = 1.0
  data_init: bool = True
  init_order: str = "sequential"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  mask_degrees: MaskDegrees | None = None
  kernel_init: Any = None
  g_start: str = "norm"

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    return _parameterized(self, x, train, {}, conv=False)
