"""Plain NNX layers: `Conv2D`, and `PlainDense` / `PlainConv` of `normal`.

The NNX twins of `wn_jax.layers.plain`: a 2-D convolution through
`wn_jax.ops.conv2d` (the layer `WeightNorm` wraps in the paper's network),
and the layers of the paper's `normal` parameterization, whose per-unit
scale is set once by `data_init` and then frozen (`Frozen`, not a Param).
Holds no weight normalization and no batch norm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wn_jax import ops, parameterizations
from wn_jax.nnx.data_init import DataInitLayer

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
Padding = str | Sequence[tuple[int, int]]

default_v_init = parameterizations.default_v_init
# nnx.Linear's and nnx.Conv's default kernel init, as Linen's.
default_kernel_init = nnx.initializers.glorot_uniform()


class Frozen(nnx.Variable):
  """A value the data-dependent init sets and training never changes.

  NNX only; in Linen it is the collection `frozen` (`wn_jax.layers.plain.FROZEN`).

  The per-unit scale of the paper's `normal` parameterization. Not an
  `nnx.Param`, so an optimizer built with `wrt=nnx.Param` leaves it alone.
  """



class Conv2D(nnx.Module):
  """2-D convolution (NHWC, HWIO kernel) through `wn_jax.ops.conv2d`.

  NNX twin of `wn_jax.layers.Conv2D`.

  As nnx.Conv for 2-D input, plus `weight_grad` ('xla', or 'per_tap' matmuls
  for the kernel gradient, faster on XLA:CPU). Parameters `kernel [kh, kw,
  in, features]`, `bias [features]`.
  """

  def __init__(self, in_features: int, features: int, kernel_size: tuple[int, int],
               *, strides: tuple[int, int] = (1, 1), padding: Padding = "SAME",
               use_bias: bool = True, weight_grad: str = "xla",
               kernel_init: Initializer = default_v_init, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.strides = tuple(strides)
    self.padding = padding
    self.weight_grad = weight_grad
    self.dtype = dtype
    self.use_bias = use_bias
    self.kernel = nnx.Param(kernel_init(
        rngs.params(), (*kernel_size, in_features, features), param_dtype))
    self.bias = (nnx.Param(jnp.zeros((features,), param_dtype)) if use_bias
                 else nnx.data(None))

  def __call__(self, x: Array) -> Array:
    ops.check_nhwc(x, type(self).__name__)
    x = jnp.asarray(x, self.dtype)
    y = ops.conv2d(x, self.kernel[...].astype(self.dtype), strides=self.strides,
                   padding=self.padding, weight_grad=self.weight_grad)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class _Plain(DataInitLayer):
  """Base of `PlainDense`/`PlainConv`: y = s * linear(x, kernel) + b.

  As `wn_jax.layers.plain._frozen_scale`: with `data_init=True` the per-unit scale `s`
  (a `Frozen` variable, starting at 1) is set by `data_init` from t = x .
  kernel (s = init_scale/sigma[t], b = -mu[t] s), the paper's `normal`
  parameterization (authors' code `no_norm`); `data_init=False` is a plain
  layer with no scale that `data_init` leaves alone.
  """

  sets_scale = True

  def _setup(self, kernel_shape, *, use_bias, init_scale, data_init, epsilon,
             kernel_init, dtype, param_dtype, axis_name, rngs):
    self._start_init_mode()
    features = kernel_shape[-1]
    self.init_scale = init_scale
    self.data_init = data_init
    self.epsilon = epsilon
    self.dtype = dtype
    self.axis_name = axis_name
    self.kernel = nnx.Param(kernel_init(rngs.params(), kernel_shape, param_dtype))
    self.scale = (Frozen(jnp.ones((features,), param_dtype)) if data_init
                  else nnx.data(None))
    self.b = (nnx.Param(jnp.zeros((features,), param_dtype)) if use_bias
              else nnx.data(None))

  def _linear(self, x: Array, kernel: Array) -> Array:
    """x times the kernel: `PlainDense` and `PlainConv` each define it."""
    raise TypeError(f"{type(self).__name__} is the shared base of PlainDense and PlainConv; "
                    "use one of them.")

  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, self.dtype)
    y = self._linear(x, self.kernel[...].astype(self.dtype))
    init = self.initializing and self.data_init
    if init:
      scale, b = ops.data_init_scale_and_bias(y, self.init_scale, self.epsilon,
                                              self.axis_name,
                                              layer=f"wn_jax.nnx.{type(self).__name__}")
      self.scale.set_value(scale.astype(self.scale.dtype))
      if self.b is not None:
        self.b.set_value(b.astype(self.b.dtype))
    t = y
    if self.scale is not None:
      y = y * self.scale[...].astype(self.dtype)
    if self.b is not None:
      y = y + self.b[...].astype(self.dtype)
    if init and self._init_order == "independent":
      return t
    return y


class PlainDense(_Plain):
  """Dense layer of the paper's `normal` parameterization.

  NNX twin of `wn_jax.layers.PlainDense`.

  Parameters `kernel [in, features]` (Glorot uniform), `b [features]`;
  `scale [features]` (`Frozen`) with `data_init=True`.
  """

  def __init__(self, in_features: int, features: int, *, use_bias: bool = True,
               init_scale: float = 1.0, data_init: bool = True, epsilon: float = 1e-8,
               kernel_init: Initializer = default_kernel_init,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               axis_name: str | None = None, rngs: nnx.Rngs):
    self._setup((in_features, features), use_bias=use_bias, init_scale=init_scale,
                data_init=data_init, epsilon=epsilon, kernel_init=kernel_init,
                dtype=dtype, param_dtype=param_dtype, axis_name=axis_name, rngs=rngs)

  def _linear(self, x, kernel):
    return parameterizations.dense(x, kernel)


class PlainConv(_Plain):
  """2-D convolution of the paper's `normal` parameterization (see `PlainDense`).

  NNX twin of `wn_jax.layers.PlainConv`.

  Parameters `kernel [kh, kw, in, features]`, `b [features]`; `scale
  [features]` (`Frozen`) with `data_init=True`. Input NHWC.
  """

  def __init__(self, in_features: int, features: int, kernel_size: tuple[int, int],
               *, strides: tuple[int, int] = (1, 1), padding: Padding = "SAME",
               use_bias: bool = True, init_scale: float = 1.0, data_init: bool = True,
               epsilon: float = 1e-8,
               kernel_init: Initializer = default_kernel_init,
               conv_weight_grad: str = "xla", dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, axis_name: str | None = None,
               rngs: nnx.Rngs):
    self.strides = tuple(strides)
    self.padding = padding
    self.conv_weight_grad = conv_weight_grad
    self._setup((*kernel_size, in_features, features), use_bias=use_bias,
                init_scale=init_scale, data_init=data_init, epsilon=epsilon,
                kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype,
                axis_name=axis_name, rngs=rngs)

  def _linear(self, x, kernel):
    ops.check_nhwc(x, type(self).__name__)
    return ops.conv2d(x, kernel, strides=self.strides, padding=self.padding,
                      weight_grad=self.conv_weight_grad)

