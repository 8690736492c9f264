"""The named weight-normalized layers: `WNDense`, `WNConv`, `WNConvTranspose`.

Each is `WeightNorm` of one flax layer (nn.Dense, `Conv2D`,
nn.ConvTranspose) in the layer's own scope, so its parameters are `v`, `g`,
`b` directly under its name. The generic wrapper is `weight_norm`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from wn_jax import ops
from wn_jax.layers.data_init import default_v_init
from wn_jax.layers.plain import Conv2D, MaskDegrees, MaskedDense, autoregressive_mask
from wn_jax.layers.weight_norm import NORM_EPSILON, WeightNorm

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
Padding = str | Sequence[tuple[int, int]]

class _WeightNormOf(nn.Module):
  """Base of WNDense/WNConv/WNConvTranspose: `WeightNorm(self._layer())` in
  this module's own scope (`nn.share_scope`), so their parameters stay
  exactly `v`, `g`, `b` directly under the layer's name."""

  @nn.nowrap  # a builder, not a call of the layer (model.tabulate lists calls)
  def _layer(self) -> nn.Module:
    raise TypeError(f"{type(self).__name__} must define _layer(), the layer to wrap.")

  def setup(self):
    self.weight_norm = WeightNorm(
        self._layer(), feature_axes=-1, use_bias=self.use_bias,
        init_scale=self.init_scale, data_init=self.data_init,
        init_order=self.init_order, epsilon=self.epsilon,
        norm_epsilon=self.norm_epsilon, v_init=self._v_init(), g_start=self.g_start,
        param_dtype=self.param_dtype, axis_name=self.axis_name)
    nn.share_scope(self, self.weight_norm)

  @nn.nowrap
  def _v_init(self) -> Initializer:
    return self.v_init

  def __call__(self, x: Array) -> Array:
    return self.weight_norm(jnp.asarray(x, self.dtype))


class WNDense(_WeightNormOf):
  """Weight-normalized dense layer, y = x (g v/||v||) + b (paper eq. 2).

  `WeightNorm(nn.Dense(features))` with the paper's v ~ N(0, 0.05).
  Linen only; in NNX: `wn_jax.nnx.WeightNorm(nnx.Linear(...))`.

  Attributes:
    features: number of output units.
    use_bias: add `b`. Set False when mean-only batch norm follows; the
      data-dependent init then sets only `g`.
    init_scale: std of each unit's pre-activation after the data-dependent
      init (paper section 2.2).
    data_init: True: `model.init` is the data-dependent init. False:
      `b = 0` and `g` starts at `g_start`.
    g_start: without the data init, 'norm' (`g = ||v||`, so `w = v` at
      start) or 'one' (`g = 1`); see `WeightNorm`.
    init_order: 'sequential' or 'independent' (see `WeightNorm`).
    epsilon: added to the init batch variance, so a constant or dead unit
      gets a finite `g` (the authors' PixelCNN++ code uses 1e-8).
    norm_epsilon: added to sum v^2 inside ||v|| (`NORM_EPSILON`).
    v_init: initializer of the direction `v` (paper: N(0, 0.05)).
    dtype: computation dtype; the norm and the init statistics are float32.
    param_dtype: dtype of `v`, `g`, `b`.
    axis_name: mapped axis for the init statistics inside shard_map/pmap.
    mask_degrees: an autoregressive (MADE) mask on the kernel
      (`wn_jax.layers.plain.MaskDegrees`); `v` starts and stays zero where
      the mask is (its gradient there is zero), so ||v|| is the norm of the
      unit's connected weights.

  Parameters: `v [in, features]`, `g [features]`, `b [features]`.
  Input `[..., in]`, output `[..., features]`.
  """
  features: int
  use_bias: bool = True
  init_scale: float = 1.0
  data_init: bool = True
  init_order: str = "sequential"
  epsilon: float = 1e-8
  norm_epsilon: float = NORM_EPSILON
  v_init: Initializer = default_v_init
  g_start: str = "norm"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None
  mask_degrees: MaskDegrees | None = None

  @nn.nowrap  # a builder, not a call of the layer (model.tabulate lists calls)
  def _layer(self) -> nn.Module:
    if self.mask_degrees is not None:
      return MaskedDense(self.features, self.mask_degrees, dtype=self.dtype,
                         param_dtype=self.param_dtype)
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype)

  @nn.nowrap
  def _v_init(self) -> Initializer:
    if self.mask_degrees is None:
      return self.v_init
    mask = autoregressive_mask(self.mask_degrees)
    return lambda key, shape, dtype: (self.v_init(key, shape, dtype) * mask).astype(dtype)


class WNConv(_WeightNormOf):
  """Weight-normalized 2-D convolution (NHWC), y = conv(x, g v/||v||) + b.

  `WeightNorm(Conv2D(...))`, i.e. through `wn_jax.ops.conv2d`. For other
  ranks, groups or dilation use `WeightNorm(nn.Conv(...))`.
  Linen only; in NNX: `wn_jax.nnx.WeightNorm(wn_jax.nnx.Conv2D(...))`.

  Attributes as `WNDense`, plus:
    kernel_size: (kh, kw), or an int for both (as nn.Conv).
    strides: (sh, sw), or an int for both.
    padding: 'SAME', 'VALID' or ((lo, hi), (lo, hi)).
    conv_weight_grad: how the kernel gradient is computed, see
      `wn_jax.ops.conv2d` ('xla', or 'per_tap' matmuls, faster on XLA:CPU).

  Parameters: `v [kh, kw, in, features]` (flax's HWIO kernel layout, the
  norm over kh, kw, in), `g [features]`, `b [features]`.
  Input `[batch, height, width, in]`, output `[batch, h', w', features]`.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  init_scale: float = 1.0
  data_init: bool = True
  init_order: str = "sequential"
  epsilon: float = 1e-8
  norm_epsilon: float = NORM_EPSILON
  v_init: Initializer = default_v_init
  g_start: str = "norm"
  conv_weight_grad: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.nowrap  # a builder, not a call of the layer (model.tabulate lists calls)
  def _layer(self) -> nn.Module:
    return Conv2D(self.features, self.kernel_size, strides=self.strides,
                  padding=self.padding, weight_grad=self.conv_weight_grad,
                  dtype=self.dtype, param_dtype=self.param_dtype)


class WNConvTranspose(_WeightNormOf):
  """Weight-normalized 2-D transposed convolution (NHWC), as `nn.ConvTranspose`.

  Linen only; in NNX: `wn_jax.nnx.WeightNorm(nnx.ConvTranspose(...))`.

  `WeightNorm(nn.ConvTranspose(...))`. `v` has flax's ConvTranspose layout
  `[kh, kw, in, features]` and `g` has one entry per OUTPUT channel
  (`features`), the norm taken over (kh, kw, in). (PyTorch's and
  TF-Addons' weight norm put `g` on the input channels of a transposed
  conv, because those store the kernel as [in, out, ...] and normalise over
  dim 0.)

  Attributes as `WNConv` (without `conv_weight_grad`).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  init_scale: float = 1.0
  data_init: bool = True
  init_order: str = "sequential"
  epsilon: float = 1e-8
  norm_epsilon: float = NORM_EPSILON
  v_init: Initializer = default_v_init
  g_start: str = "norm"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.nowrap  # a builder, not a call of the layer (model.tabulate lists calls)
  def _layer(self) -> nn.Module:
    kernel_size = ((self.kernel_size,) * 2 if isinstance(self.kernel_size, int)
                   else tuple(self.kernel_size))
    if len(kernel_size) != 2:
      raise ValueError(f"WNConvTranspose is 2-D; got kernel_size {self.kernel_size}"
                       " (use WeightNorm(nn.ConvTranspose(...)) for other ranks).")
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else self.strides
    return nn.ConvTranspose(self.features, kernel_size, strides=strides,
                            padding=self.padding, dtype=self.dtype,
                            param_dtype=self.param_dtype)

  def __call__(self, x: Array) -> Array:
    ops.check_nhwc(x, type(self).__name__)
    return super().__call__(x)
