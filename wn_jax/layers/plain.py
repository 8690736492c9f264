"""Un-normalized layers: `Conv2D`, and the `normal` parameterization.

`Conv2D` is the 2-D convolution through `wn_jax.ops.conv2d` that `WNConv`
normalizes. `PlainDense` / `PlainConv` are the paper's `normal` layers: a
per-unit scale set by the data-dependent init and then frozen (collection
`FROZEN`), so `normal` starts from the same function as `wn`. No weight
norm and no batch norm here (`weight_norm`, `batch_norm`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from wn_jax import ops
from wn_jax.layers.data_init import (
  check_init_order,
  data_init_scale_and_bias,
  default_v_init,
  runs_data_init,
)
from wn_jax.parameterizations import (  # noqa: F401 (re-exported for the layers' users)
  FROZEN,
  NORMAL_WEIGHTS,
  check_normal_weights,
  dense,
  with_normal_weights,
)

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
Padding = str | Sequence[tuple[int, int]]

class Conv2D(nn.Module):
  """2-D convolution (NHWC, HWIO kernel) through `wn_jax.ops.conv2d`.

  Linen twin of `wn_jax.nnx.Conv2D`.

  The plain layer that `WNConv` normalises: as nn.Conv for 2-D input, plus
  `weight_grad` ('xla', or 'per_tap' matmuls for the kernel gradient,
  faster on XLA:CPU). Parameters `kernel [kh, kw, in, features]`, `bias
  [features]`. Input [batch, height, width, in].
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  weight_grad: str = "xla"
  kernel_init: Initializer = default_v_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ops.check_nhwc(x, type(self).__name__)
    x = jnp.asarray(x, self.dtype)
    kernel = self.param("kernel", self.kernel_init,
                        (*ops.int_pair(self.kernel_size, "kernel_size"), x.shape[-1],
                         self.features),
                        self.param_dtype)
    y = ops.conv2d(x, kernel.astype(self.dtype), strides=self.strides,
                   padding=self.padding, weight_grad=self.weight_grad)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def _frozen_scale(
    module: nn.Module,
    x: Array,
    kernel: Array,
    linear: Callable[[Array, Array], Array],
) -> Array:
  """Shared body of the plain layers: y = s * linear(x, kernel) + b.

  With `data_init=True` the per-unit scale `s` is set by the data-dependent
  init (`data_init_scale_and_bias` of t = x . kernel: `s = init_scale/sigma[t]`,
  `b = -mu[t] s`) and stored in the non-trainable collection `FROZEN`: the
  paper's `normal` parameterization, which starts from the same function as
  weight norm (authors' code `no_norm`/`InitLayer`). With `data_init=False`
  there is no scale: a plain layer with its standard init. With
  `init_order='independent'` the init passes on t itself (s = 1, no bias).
  """
  check_init_order(module.init_order)
  features = kernel.shape[-1]
  y = linear(x, kernel.astype(module.dtype))
  # Flax evaluates a param's init function (abstractly) on every call to
  # check shapes, so the init values must exist outside `init` too.
  scale_init = jnp.ones((features,), jnp.float32)
  b_init = jnp.zeros((features,), jnp.float32)
  data_init = runs_data_init(module)
  if data_init:
    scale_init, b_init = data_init_scale_and_bias(
        y, module.init_scale, module.epsilon, module.axis_name,
        layer=f"{type(module).__name__} at '{'/'.join(module.scope.path)}'")
  t = y
  if module.data_init:
    scale = module.variable(
        FROZEN, "scale", lambda: scale_init.astype(module.param_dtype)).value
    y = y * scale.astype(module.dtype)
  if module.use_bias:
    b = module.param("b", lambda *_: b_init.astype(module.param_dtype), (features,))
    y = y + b.astype(module.dtype)
  if data_init and module.init_order == "independent":
    return t
  return y


# A dense layer's autoregressive connectivity (MADE, Germain et al. 2015):
# (in_degrees, out_degrees, strict). Input i feeds output j iff
# out_degrees[j] >= in_degrees[i], or > when strict (the output layer, so
# output d sees only inputs before d). Tuples, so layers stay hashable.
MaskDegrees = tuple[tuple[int, ...], tuple[int, ...], bool]


def autoregressive_mask(degrees: MaskDegrees) -> np.ndarray:
  """The float32 [in, out] 0/1 kernel mask of `degrees` (see `MaskDegrees`)."""
  in_degrees, out_degrees, strict = degrees
  inputs, outputs = np.asarray(in_degrees)[:, None], np.asarray(out_degrees)[None, :]
  return (outputs > inputs if strict else outputs >= inputs).astype(np.float32)


class MaskedDense(nn.Module):
  """y = x (kernel * mask) + bias, the mask from `mask_degrees` (MADE).

  The layer `WNDense` normalizes when it has `mask_degrees`. Parameters
  `kernel [in, features]`, `bias [features]`; input `[..., in]`.
  """
  features: int
  mask_degrees: MaskDegrees
  use_bias: bool = True
  kernel_init: Initializer = default_v_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, self.dtype)
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    check_mask_shape(self.mask_degrees, kernel.shape, type(self).__name__)
    y = dense(x, (kernel * autoregressive_mask(self.mask_degrees)).astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         self.param_dtype).astype(self.dtype)
    return y


def check_mask_shape(degrees: MaskDegrees | None, kernel_shape, where: str) -> None:
  """ValueError when a mask's degrees do not match the kernel [in, out]."""
  if degrees is not None and (len(degrees[0]), len(degrees[1])) != tuple(kernel_shape):
    raise ValueError(f"{where}: mask_degrees for {len(degrees[0])} inputs and "
                     f"{len(degrees[1])} outputs, but the kernel is {tuple(kernel_shape)}.")


def _kernel_shape(module: nn.Module, x: Array) -> tuple[int, ...]:
  """HWIO kernel shape of a 2-D conv: (kh, kw, in, out)."""
  ops.check_nhwc(x, type(module).__name__)
  return (*ops.int_pair(module.kernel_size, "kernel_size"), x.shape[-1], module.features)


class PlainDense(nn.Module):
  """Dense layer of the paper's `normal` parameterization.

  Linen twin of `wn_jax.nnx.PlainDense`.

  y = s * (x kernel) + b, with `s` a per-unit scale in the `FROZEN`
  collection set by the data-dependent init and then never trained (authors'
  code `no_norm`), so `normal` starts from the same function as `wn`. With
  `data_init=False` it is a plain dense layer (no `s`).
  Kernel init: Glorot uniform (Lasagne's default, as in the authors' code).
  `mask_degrees`: an autoregressive (MADE) mask on the kernel (see
  `MaskDegrees`); masked entries never act and get no gradient.
  """
  features: int
  use_bias: bool = True
  init_scale: float = 1.0
  data_init: bool = True
  init_order: str = "sequential"
  epsilon: float = 1e-8
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  mask_degrees: MaskDegrees | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, self.dtype)
    shape = (x.shape[-1], self.features)
    if self.mask_degrees is None:
      kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
      return _frozen_scale(self, x, kernel, dense)
    check_mask_shape(self.mask_degrees, shape, type(self).__name__)
    mask = autoregressive_mask(self.mask_degrees)
    # Zero where masked from the start, so the kernel holds only what acts
    # (folding and conversions read it as it is).
    kernel = self.param("kernel", lambda *a: self.kernel_init(*a) * mask, shape,
                        self.param_dtype)
    return _frozen_scale(self, x, kernel * mask, dense)


class PlainConv(nn.Module):
  """2-D convolution of the paper's `normal` parameterization (see `PlainDense`).

  Linen twin of `wn_jax.nnx.PlainConv`.
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
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  conv_weight_grad: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, self.dtype)
    kernel = self.param(
        "kernel", self.kernel_init, _kernel_shape(self, x), self.param_dtype)
    conv = lambda x, w: ops.conv2d(x, w, strides=self.strides, padding=self.padding,
                                   weight_grad=self.conv_weight_grad)
    return _frozen_scale(self, x, kernel, conv)
