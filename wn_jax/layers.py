"""Weight normalization, its data-dependent init, and mean-only batch norm.

Salimans & Kingma, "Weight Normalization: A Simple Reparameterization to
Accelerate Training of Deep Neural Networks", NIPS 2016.

A weight-normalized layer computes (paper eq. 2)

    y = phi(w . x + b),    w = g * v / ||v||,

with one scale ``g`` per output unit and the norm of ``v`` taken per output
unit over every other axis of ``v``. Autodiff through ``w`` gives the
paper's eq. 3 and 4:

    grad_g = grad_w . v / ||v||,    grad_v = (g / ||v||) M_w grad_w,
    M_w = I - w w^T / ||w||^2,

so ``grad_v`` is orthogonal to ``v`` and ``||v||`` grows under SGD.

The data-dependent init (paper section 2.2) IS ``model.init``
------------------------------------------------------------
``variables = model.init(rngs, init_batch)`` draws ``v ~ N(0, 0.05)`` and
then, for each layer, computes ``t = v . x / ||v||`` on the init batch, its
per-unit mean ``mu[t]`` and std ``sigma[t]`` over every axis but the feature
axis (batch, height, width), and sets

    g = init_scale / sigma[t],    b = -mu[t] * init_scale / sigma[t],

so the layer's pre-activation ``g t + b`` on the init batch has mean 0 and
std ``init_scale`` per unit. Flax Linen's ``init`` runs ``__call__`` once and
creates each parameter when its layer is first reached, in call order, and
the init functions here return the *data-initialised* value, so a deep model
is initialised layer by layer in ONE forward pass: every layer sees the
outputs of the already-initialised layers before it (the paper leaves this
ordering implicit; the authors' code does the same with Theano updates).
Under ``jax.jit`` with the init batch sharded over devices, ``jnp.mean`` is a
global reduction, so the statistics are those of the global batch. Inside
``shard_map``/``pmap`` set ``axis_name`` so they are averaged across devices.

With ``data_init=False`` the layers start at ``g = ||v||`` and ``b = 0``, so
``w = v`` at start (PyTorch's ``weight_norm`` does this), for ablations.

Mean-only batch norm (paper section 3)
--------------------------------------
``MeanOnlyBatchNorm`` subtracts the per-channel minibatch mean in training and
a running mean at test time, never divides by the std, then adds a learned
bias. Placed after a weight-normalized layer without bias (``use_bias=False``)
the data-dependent init sets only ``g = init_scale / sigma[t]`` and leaves the
centring to the batch norm, so the output after mean-only BN has mean 0 and
std ``init_scale`` on the init batch, as in the authors' ``mean_only_bn``.

The paper's five parameterizations (``normal``, ``wn``, ``bn``, ``mobn``,
``wn_mobn``) are built by ``NormalizedDense`` / ``NormalizedConv`` from one
config string; see ``PARAMETERIZATIONS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from wn_jax import ops

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
Padding = str | Sequence[tuple[int, int]]

# Variables the data-dependent init sets and training never changes (the
# frozen per-unit scale of the paper's `normal` parameterization). They live
# outside 'params' so no optimizer ever sees them.
FROZEN = "frozen"

PARAMETERIZATIONS = ("normal", "wn", "bn", "mobn", "wn_mobn")

# Authors' code: v ~ N(0, 0.05) for weight norm and for batch norm's kernel.
default_v_init = nn.initializers.normal(stddev=0.05)


def _reduction_axes(x: Array) -> tuple[int, ...]:
  """Every axis but the last (feature) axis: batch and spatial."""
  return tuple(range(x.ndim - 1))


def _batch_mean(x: Array, axis_name: str | None) -> Array:
  """Per-feature mean over batch and spatial axes, float32: [..., C] -> [C].

  Under jit with a sharded batch this is already the global mean; inside
  shard_map/pmap `axis_name` averages the per-device means (equal shards).
  """
  mean = jnp.mean(x.astype(jnp.float32), axis=_reduction_axes(x))
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)
  return mean


def _batch_mean_and_var(x: Array, axis_name: str | None) -> tuple[Array, Array]:
  """Per-feature mean and biased variance (mean of squared deviations)."""
  mean = _batch_mean(x, axis_name)
  var = _batch_mean(jnp.square(x.astype(jnp.float32) - mean), axis_name)
  return mean, var


def _direction_norm(v: Array) -> Array:
  """||v|| per output unit, float32: v [..., out] -> [out]."""
  v32 = v.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(jnp.square(v32), axis=_reduction_axes(v32)))


def _weight_normalized(
    module: nn.Module,
    x: Array,
    v: Array,
    linear: Callable[[Array, Array], Array],
) -> Array:
  """Shared body of the WN layers: y = linear(x, g v/||v||) + b (eq. 2).

  `module` supplies the hyperparameters (features, use_bias, init_scale,
  data_init, epsilon, dtype, param_dtype, axis_name) and owns `g` and `b`.

  Speed: we build `w = v * (g/||v||)` and run one ordinary matmul/conv,
  rather than scaling the output by `g/||v||` after the op. The extra work
  is O(kernel size) (83k numbers for a 3x3 96->96 conv) instead of
  O(output size) (9.8M for its output at batch 100, 32x32), and in the
  backward pass `grad_g` then needs no reduction over the output.
  """
  features = v.shape[-1]
  v_norm = _direction_norm(v)
  data_init = module.data_init and module.is_initializing()

  if data_init:
    # t = v.x/||v|| on the init batch; g and b standardise it (section 2.2).
    t = linear(x, (v / v_norm).astype(module.dtype))
    mean, var = _batch_mean_and_var(t, module.axis_name)
    g_init = module.init_scale * lax.rsqrt(var + module.epsilon)
    b_init = -mean * g_init
  else:
    g_init, b_init = v_norm, jnp.zeros((features,), jnp.float32)

  g = module.param("g", lambda *_: g_init.astype(module.param_dtype), (features,))
  if data_init:
    # linear(x, g v/||v||) = g t: reuse t, so the init costs one forward pass.
    y = t * g.astype(module.dtype)
  else:
    w = v.astype(jnp.float32) * (g.astype(jnp.float32) / v_norm)
    y = linear(x, w.astype(module.dtype))
  if module.use_bias:
    b = module.param("b", lambda *_: b_init.astype(module.param_dtype), (features,))
    y = y + b.astype(module.dtype)
  return y


def _frozen_scale(
    module: nn.Module,
    x: Array,
    kernel: Array,
    linear: Callable[[Array, Array], Array],
) -> Array:
  """Shared body of the plain layers: y = s * linear(x, kernel) + b.

  With `data_init=True` the per-unit scale `s` is set by the data-dependent
  init (`s = init_scale/sigma[t]`, `b = -mu[t] s` for `t = x . kernel`) and
  stored in the non-trainable collection `FROZEN`: the paper's `normal`
  parameterization, which starts from the same function as weight norm
  (authors' code `no_norm`/`InitLayer`). With `data_init=False` there is no
  scale: a plain layer with its standard init.
  """
  features = kernel.shape[-1]
  y = linear(x, kernel.astype(module.dtype))
  # Flax evaluates a param's init function (abstractly) on every call to
  # check shapes, so the init values must exist outside `init` too.
  scale_init = jnp.ones((features,), jnp.float32)
  b_init = jnp.zeros((features,), jnp.float32)
  if module.data_init and module.is_initializing():
    mean, var = _batch_mean_and_var(y, module.axis_name)
    scale_init = module.init_scale * lax.rsqrt(var + module.epsilon)
    b_init = -mean * scale_init
  if module.data_init:
    scale = module.variable(
        FROZEN, "scale", lambda: scale_init.astype(module.param_dtype)).value
    y = y * scale.astype(module.dtype)
  if module.use_bias:
    b = module.param("b", lambda *_: b_init.astype(module.param_dtype), (features,))
    y = y + b.astype(module.dtype)
  return y


def _dense(x: Array, w: Array) -> Array:
  """x [..., in] @ w [in, out] -> [..., out]."""
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _kernel_shape(module: nn.Module, x: Array) -> tuple[int, ...]:
  """HWIO kernel shape of a 2-D conv: (kh, kw, in, out)."""
  if x.ndim != 4:
    raise ValueError(
        f"{type(module).__name__} expects NHWC input [batch, height, width, "
        f"channels], got shape {x.shape}.")
  return (*module.kernel_size, x.shape[-1], module.features)


def _conv_fn(module: nn.Module) -> Callable[[Array, Array], Array]:
  return lambda x, w: ops.conv2d(
      x, w, strides=module.strides, padding=module.padding,
      weight_grad=module.conv_weight_grad)


class WNDense(nn.Module):
  """Weight-normalized dense layer, y = x (g v/||v||) + b (paper eq. 2).

  Attributes:
    features: number of output units.
    use_bias: add `b`. Set False when mean-only batch norm follows; the
      data-dependent init then sets only `g`.
    init_scale: std of each unit's pre-activation after the data-dependent
      init (paper section 2.2).
    data_init: True: `model.init` is the data-dependent init. False:
      `g = ||v||`, `b = 0`, so `w = v` at start.
    epsilon: added to the init batch variance, so a constant or dead unit
      gets a finite `g` (the authors' PixelCNN++ code uses 1e-8).
    v_init: initializer of the direction `v` (paper: N(0, 0.05)).
    dtype: computation dtype; the norm and the init statistics are float32.
    param_dtype: dtype of `v`, `g`, `b`.
    axis_name: mapped axis for the init statistics inside shard_map/pmap.

  Parameters: `v [in, features]`, `g [features]`, `b [features]`.
  Input `[..., in]`, output `[..., features]`.
  """
  features: int
  use_bias: bool = True
  init_scale: float = 1.0
  data_init: bool = True
  epsilon: float = 1e-8
  v_init: Initializer = default_v_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, self.dtype)
    v = self.param("v", self.v_init, (x.shape[-1], self.features), self.param_dtype)
    return _weight_normalized(self, x, v, _dense)


class WNConv(nn.Module):
  """Weight-normalized 2-D convolution (NHWC), y = conv(x, g v/||v||) + b.

  Attributes as `WNDense`, plus:
    kernel_size: (kh, kw).
    strides: (sh, sw).
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
  epsilon: float = 1e-8
  v_init: Initializer = default_v_init
  conv_weight_grad: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, self.dtype)
    v = self.param("v", self.v_init, _kernel_shape(self, x), self.param_dtype)
    return _weight_normalized(self, x, v, _conv_fn(self))


class WNConvTranspose(nn.Module):
  """Weight-normalized 2-D transposed convolution (NHWC), as `nn.ConvTranspose`.

  `v` has flax's ConvTranspose layout `[kh, kw, in, features]` and `g` has
  one entry per OUTPUT channel (`features`), the norm taken over
  (kh, kw, in). (PyTorch's and TF-Addons' weight norm put `g` on the input
  channels of a transposed conv, because those store the kernel as
  [in, out, ...] and normalise over dim 0.)

  Attributes as `WNConv` (without `conv_weight_grad`).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  init_scale: float = 1.0
  data_init: bool = True
  epsilon: float = 1e-8
  v_init: Initializer = default_v_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, self.dtype)
    v = self.param("v", self.v_init, _kernel_shape(self, x), self.param_dtype)

    def conv_transpose(x, w):
      return lax.conv_transpose(
          x, w, self.strides, self.padding,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))

    return _weight_normalized(self, x, v, conv_transpose)


class PlainDense(nn.Module):
  """Dense layer of the paper's `normal` parameterization.

  y = s * (x kernel) + b, with `s` a per-unit scale in the `FROZEN`
  collection set by the data-dependent init and then never trained (authors'
  code `no_norm`), so `normal` starts from the same function as `wn`. With
  `data_init=False` it is a plain dense layer (no `s`).
  Kernel init: Glorot uniform (Lasagne's default, as in the authors' code).
  """
  features: int
  use_bias: bool = True
  init_scale: float = 1.0
  data_init: bool = True
  epsilon: float = 1e-8
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, self.dtype)
    kernel = self.param(
        "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
    return _frozen_scale(self, x, kernel, _dense)


class PlainConv(nn.Module):
  """2-D convolution of the paper's `normal` parameterization (see `PlainDense`)."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  init_scale: float = 1.0
  data_init: bool = True
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
    return _frozen_scale(self, x, kernel, _conv_fn(self))


def _update_running(module: nn.Module, name: str, features: int,
                    init_value: float, batch_value: Array | None) -> Array:
  """Running average in 'batch_stats': new = momentum*old + (1-momentum)*batch.

  Returns the stored value; the average is not updated during `init` (as
  flax's BatchNorm) or when `batch_value` is None (evaluation).
  """
  stat = module.variable(
      "batch_stats", name,
      lambda: jnp.full((features,), init_value, jnp.float32))
  if batch_value is not None and not module.is_initializing():
    stat.value = module.momentum * stat.value + (1 - module.momentum) * batch_value
  return stat.value


class MeanOnlyBatchNorm(nn.Module):
  """Mean-only batch normalization (paper section 3): y = x - mu[x] + b.

  Training (`use_running_average=False`): subtract the per-channel mean over
  batch and spatial axes of this minibatch (the global batch when sharded
  under jit; `axis_name` inside shard_map/pmap), and update the running mean
  in `batch_stats['mean']` as `momentum * old + (1 - momentum) * batch_mean`
  (authors' code: 0.9, starting from 0; not updated during `init`).
  Evaluation (`use_running_average=True`): subtract the running mean.
  No division by the std. Then add the learned bias `b` (init 0).

  Input and output `[..., features]`.
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  use_bias: bool = True
  bias_init: Initializer = nn.initializers.zeros
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    features = x.shape[-1]
    batch_mean = None if use_running_average else _batch_mean(x, self.axis_name)
    running_mean = _update_running(self, "mean", features, 0.0, batch_mean)
    mean = running_mean if use_running_average else batch_mean
    dtype = self.dtype or x.dtype
    y = x.astype(dtype) - mean.astype(dtype)
    if self.use_bias:
      b = self.param("b", self.bias_init, (features,), self.param_dtype)
      y = y + b.astype(dtype)
    return y


class BatchNorm(nn.Module):
  """Batch normalization exactly as the authors' CIFAR-10 code (`bn` rows).

  Training: `y = (x - mu) / sqrt(var + epsilon) * scale + b` with the biased
  minibatch variance; running averages `momentum * old + (1 - momentum) *
  batch` of the mean and of the variance, the latter with the correction
  `n / (n - 1)` where `n` is the BATCH SIZE (axis 0), as `BatchNormLayer`
  does, even for conv layers. Evaluation: the running averages.
  Defaults follow the code: epsilon 1e-6, momentum 0.9, scale init 1,
  bias init 0, running mean init 0 and running variance init 1.
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-6
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    features = x.shape[-1]
    if use_running_average:
      batch_mean = batch_var_unbiased = None
    else:
      batch_mean, batch_var = _batch_mean_and_var(x, self.axis_name)
      n = x.shape[0]
      batch_var_unbiased = batch_var * (n / max(n - 1, 1))
    running_mean = _update_running(self, "mean", features, 0.0, batch_mean)
    running_var = _update_running(self, "var", features, 1.0, batch_var_unbiased)
    if use_running_average:
      mean, var = running_mean, running_var
    else:
      mean, var = batch_mean, batch_var
    scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
    b = self.param("b", nn.initializers.zeros, (features,), self.param_dtype)
    dtype = self.dtype or x.dtype
    mul = (scale * lax.rsqrt(var + self.epsilon)).astype(dtype)
    return (x.astype(dtype) - mean.astype(dtype)) * mul + b.astype(dtype)


def check_parameterization(parameterization: str) -> None:
  """Raises ValueError naming the valid choices for an unknown name."""
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(
        f"Unknown parameterization {parameterization!r}; valid ones are "
        f"{', '.join(PARAMETERIZATIONS)}.")


def _parameterized(
    parent: nn.Module,
    x: Array,
    train: bool,
    layer_kwargs: dict[str, Any],
    conv: bool,
) -> Array:
  """Builds and applies the linear layer (+ norm) for `parent.parameterization`."""
  check_parameterization(parent.parameterization)
  weight_norm = parent.parameterization in ("wn", "wn_mobn")
  batch_norm = parent.parameterization in ("bn", "mobn", "wn_mobn")
  kwargs = dict(layer_kwargs, features=parent.features, use_bias=not batch_norm,
                dtype=parent.dtype)
  if parent.parameterization == "bn":
    # Authors' BatchNormLayer: kernel ~ N(0, 0.05), no data-dependent init.
    kwargs.update(data_init=False, kernel_init=default_v_init)
  else:
    kwargs.update(data_init=parent.data_init, init_scale=parent.init_scale)
  if conv:
    layer = WNConv if weight_norm else PlainConv
  else:
    layer = WNDense if weight_norm else PlainDense
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
  `data_init=False` switches the data-dependent init off for every
  parameterization (WN then starts at `g = ||v||`, `b = 0`).
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
  conv_weight_grad: str = "xla"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    layer_kwargs = dict(kernel_size=self.kernel_size, strides=self.strides,
                        padding=self.padding,
                        conv_weight_grad=self.conv_weight_grad)
    return _parameterized(self, x, train, layer_kwargs, conv=True)


class NormalizedDense(nn.Module):
  """A dense layer in one of the paper's parameterizations (see `NormalizedConv`).

  Input `[..., in]`, output `[..., features]`.
  """
  features: int
  parameterization: str = "wn"
  init_scale: float = 1.0
  data_init: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    return _parameterized(self, x, train, {}, conv=False)
