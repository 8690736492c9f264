"""Weight normalization for Flax NNX, with the paper's data-dependent init.

The same method as `wn_jax.layers` (read its package docstring for the paper's
equations); the math is `wn_jax.ops` (`direction_norm`,
`weight_normalized_kernel`, `data_init_scale_and_bias`), shared with the
Linen layers, so both compute the same numbers.

NNX modules hold their parameters from construction, so the data-dependent
init is a step of its own rather than `model.init`:

    model = Net(rngs=nnx.Rngs(0))      # v ~ N(0, 0.05), g = ||v||, b = 0
    data_init(model, init_batch)       # g = init_scale/sigma[t], b = -mu[t] g

`data_init` runs ONE forward pass over the init batch; each layer that has a
data-dependent init sets its `g` and `b` when the pass reaches it and passes
on its initialised output (`init_order='sequential'`, the authors' code and
the Linen path), or its un-initialised output (`'independent'`).
`g`, `v` and `b` are `nnx.Param`s, so `nnx.state(model, nnx.Param)`,
`nnx.grad` and `nnx.Optimizer(model, tx, wrt=nnx.Param)` see and train all
three. The frozen per-unit scale of the paper's `normal` parameterization is
a `Frozen` variable, not a Param, so no optimizer trains it.

`WeightNorm(layer)` wraps nnx.Linear, nnx.LinearGeneral, nnx.Conv (any
rank, strides, dilation, feature_group_count), nnx.ConvTranspose,
nnx.Einsum and `Conv2D`; `NormalizedConv` / `NormalizedDense` build the
paper's five parameterizations from one string, as their Linen namesakes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wn_jax import ops
from wn_jax.layers import data_init as linen_data_init
from wn_jax.layers import parameterization as linen_parameterization
from wn_jax.layers import plain as linen_plain

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
Padding = str | Sequence[tuple[int, int]]

default_v_init = linen_data_init.default_v_init
# nnx.Linear's and nnx.Conv's default kernel init, as Linen's.
default_kernel_init = nnx.initializers.glorot_uniform()


class Frozen(nnx.Variable):
  """A value the data-dependent init sets and training never changes.

  The NNX counterpart of the Linen collection `wn_jax.layers.plain.FROZEN`: the per-unit
  scale of the paper's `normal` parameterization. Not an `nnx.Param`, so an
  optimizer built with `wrt=nnx.Param` leaves it alone.
  """


class _DataInitLayer(nnx.Module):
  """A layer that takes part in `data_init`.

  `data_init` sets `_init_order` ('sequential' or 'independent') on every
  such layer for the duration of its forward pass; None otherwise.
  """

  def _start_init_mode(self) -> None:
    self._init_order: str | None = None

  @property
  def initializing(self) -> bool:
    return self._init_order is not None


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


class WeightNorm(_DataInitLayer):
  """Weight normalization of any NNX layer with a kernel (paper eq. 2).

  ``WeightNorm(layer, rngs=rngs)(x)`` computes ``layer`` with its kernel
  replaced by ``w = g v/||v||``, ``||v|| = sqrt(sum v^2 + norm_epsilon)``,
  the norm per output unit over every kernel axis but `feature_axes`, and
  then adds the bias ``b``. The wrapped layer is run as a pure function of
  its kernel (`nnx.merge` of its graph with the kernel ``w``): it owns no
  variables here, so the wrapper's state is exactly

    v: the direction, in the layer's own kernel layout, drawn by `v_init`
      (default N(0, 0.05), the authors' code) from `rngs.params()`;
    g: the scale, shape = v's feature axes, starting at ||v|| (w = v);
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
    v_init: initializer of v (key, shape, dtype); None = take the layer's
      own kernel as v (then `rngs` is not needed).
    kernel_name: the name of the layer's kernel attribute.
    param_dtype: dtype of g and b (v keeps the kernel's dtype).
    axis_name: mapped axis for the init statistics inside shard_map/pmap.
    rngs: draws v.
  """

  def __init__(
      self,
      layer: nnx.Module,
      *,
      init_scale: float = 1.0,
      feature_axes: int | Sequence[int] | None = None,
      use_bias: bool | None = None,
      epsilon: float = 1e-8,
      norm_epsilon: float = ops.NORM_EPSILON,
      v_init: Initializer | None = default_v_init,
      kernel_name: str = "kernel",
      param_dtype: Dtype = jnp.float32,
      axis_name: str | None = None,
      rngs: nnx.Rngs | None = None,
  ):
    self._start_init_mode()
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
    self.init_scale = init_scale
    self.epsilon = epsilon
    self.norm_epsilon = norm_epsilon
    self.axis_name = axis_name
    self.layer_type = type(layer).__name__
    self.layer_graphdef = graphdef
    self.v = nnx.Param(v)
    norm = ops.direction_norm(v, axes, norm_epsilon).reshape(self.feature_shape)
    self.g = nnx.Param(norm.astype(param_dtype))
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
          t, self.init_scale, self.epsilon, self.axis_name, len(self.feature_shape))
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
  if layer.einsum_str is None:
    return
  kernel_subscripts, output = ops.einsum_kernel_and_output(layer.einsum_str)
  features = "".join(kernel_subscripts[a] for a in axes)
  if not output.endswith(features):
    raise ValueError(
        f"WeightNorm of nnx.Einsum({layer.einsum_str!r}): the output subscripts "
        f"{output!r} must end with the feature subscripts {features!r} "
        f"(feature_axes {axes}), in that order.")


class Conv2D(nnx.Module):
  """2-D convolution (NHWC, HWIO kernel) through `wn_jax.ops.conv2d`.

  The NNX twin of `wn_jax.layers.plain.Conv2D`: nnx.Conv for 2-D input plus
  `weight_grad` ('xla', or 'per_tap' matmuls for the kernel gradient, faster
  on XLA:CPU). Parameters `kernel [kh, kw, in, features]`, `bias [features]`.
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
    if x.ndim != 4:
      raise ValueError(
          f"{type(self).__name__} expects NHWC input [batch, height, width, "
          f"channels], got shape {x.shape}.")
    x = jnp.asarray(x, self.dtype)
    y = ops.conv2d(x, self.kernel[...].astype(self.dtype), strides=self.strides,
                   padding=self.padding, weight_grad=self.weight_grad)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class _Plain(_DataInitLayer):
  """Base of `PlainDense`/`PlainConv`: y = s * linear(x, kernel) + b.

  As `wn_jax.layers.plain._frozen_scale`: with `data_init=True` the per-unit scale `s`
  (a `Frozen` variable, starting at 1) is set by `data_init` from t = x .
  kernel (s = init_scale/sigma[t], b = -mu[t] s), the paper's `normal`
  parameterization (authors' code `no_norm`); `data_init=False` is a plain
  layer with no scale that `data_init` leaves alone.
  """

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
    raise NotImplementedError

  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, self.dtype)
    y = self._linear(x, self.kernel[...].astype(self.dtype))
    init = self.initializing and self.data_init
    if init:
      scale, b = ops.data_init_scale_and_bias(y, self.init_scale, self.epsilon,
                                              self.axis_name)
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
  """Dense layer of the paper's `normal` parameterization (as
  `wn_jax.layers.plain.PlainDense`).

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
    return linen_plain.dense(x, kernel)


class PlainConv(_Plain):
  """2-D conv of the paper's `normal` parameterization (`wn_jax.layers.plain.PlainConv`).

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
    if x.ndim != 4:
      raise ValueError(
          f"{type(self).__name__} expects NHWC input [batch, height, width, "
          f"channels], got shape {x.shape}.")
    return ops.conv2d(x, kernel, strides=self.strides, padding=self.padding,
                      weight_grad=self.conv_weight_grad)


def _running_average(stat: nnx.BatchStat, momentum: float, batch_value: Array) -> None:
  stat.set_value(momentum * stat[...] + (1 - momentum) * batch_value)


class MeanOnlyBatchNorm(_DataInitLayer):
  """Mean-only batch normalization (paper section 3): y = x - mu[x] + b.

  As `wn_jax.layers.batch_norm.MeanOnlyBatchNorm`: training (`use_running_average=False`)
  subtracts the per-channel mean of this minibatch (global when sharded
  under jit; `axis_name` inside shard_map/pmap) and updates the running
  mean `mean` (an `nnx.BatchStat`) as `momentum * old + (1 - momentum) *
  batch_mean`, except during `data_init` (as Linen's `init`); evaluation
  subtracts the running mean. No division by the std. Then adds `b`.
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = None,
               momentum: float = 0.9, use_bias: bool = True,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
               axis_name: str | None = None, rngs: nnx.Rngs | None = None):
    del rngs  # no random init; accepted for the usual NNX signature
    self._start_init_mode()
    self.use_running_average = use_running_average
    self.momentum = momentum
    self.dtype = dtype
    self.axis_name = axis_name
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.b = (nnx.Param(jnp.zeros((num_features,), param_dtype)) if use_bias
              else nnx.data(None))

  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = _first(use_running_average, self.use_running_average)
    if use_running_average:
      mean = self.mean[...]
    else:
      mean = ops.batch_mean(x, self.axis_name)
      if not self.initializing:
        _running_average(self.mean, self.momentum, mean)
    dtype = self.dtype or x.dtype
    y = x.astype(dtype) - mean.astype(dtype)
    if self.b is not None:
      y = y + self.b[...].astype(dtype)
    return y


class BatchNorm(_DataInitLayer):
  """Batch normalization exactly as the authors' CIFAR-10 code (`bn` rows).

  As `wn_jax.layers.batch_norm.BatchNorm`: biased minibatch variance in training; running
  averages of the mean and of the variance with the correction n/(n-1), n
  the batch size (axis 0); not updated during `data_init`. Parameters
  `scale` (init 1) and `b` (init 0); batch stats `mean` (0) and `var` (1).
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = None,
               momentum: float = 0.9, epsilon: float = 1e-6, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, axis_name: str | None = None,
               rngs: nnx.Rngs | None = None):
    del rngs
    self._start_init_mode()
    self.use_running_average = use_running_average
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.axis_name = axis_name
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.b = nnx.Param(jnp.zeros((num_features,), param_dtype))

  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = _first(use_running_average, self.use_running_average)
    if use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      mean, var = ops.batch_mean_and_var(x, self.axis_name)
      if not self.initializing:
        n = x.shape[0]
        _running_average(self.mean, self.momentum, mean)
        _running_average(self.var, self.momentum, var * (n / max(n - 1, 1)))
    dtype = self.dtype or x.dtype
    mul = (self.scale[...] * jax.lax.rsqrt(var + self.epsilon)).astype(dtype)
    return (x.astype(dtype) - mean.astype(dtype)) * mul + self.b[...].astype(dtype)


def _first(*values):
  for value in values:
    if value is not None:
      return value
  raise ValueError("use_running_average is not set: pass it to the constructor "
                   "or the call.")


class _Normalized(nnx.Module):
  """Base of `NormalizedConv`/`NormalizedDense`: `linear`, then `norm`."""

  def _build(self, make_wn_layer, make_plain, make_folded, features, *,
             parameterization, init_scale, data_init, bn_momentum, bn_epsilon,
             rngs):
    self.parameterization = parameterization
    if parameterization == linen_parameterization.FOLDED:
      self.linear = make_folded()
      self.norm = nnx.data(None)
      return
    linen_parameterization.check_parameterization(parameterization)
    weight_norm = parameterization in ("wn", "wn_mobn")
    batch_norm = parameterization in ("bn", "mobn", "wn_mobn")
    if weight_norm:
      self.linear = WeightNorm(make_wn_layer(), feature_axes=-1,
                               use_bias=not batch_norm, init_scale=init_scale,
                               rngs=rngs)
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
  """A 2-D conv in one of the paper's parameterizations (as
  `wn_jax.layers.parameterization.NormalizedConv`).

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


def data_init(model: nnx.Module, *inputs: Any, init_order: str = "sequential",
              **kwargs: Any) -> Any:
  """The paper's data-dependent init (section 2.2) of `model`, in place.

  Runs `model(*inputs, **kwargs)` once on the init batch. Every layer with
  a data-dependent init (`WeightNorm`, and `PlainDense`/`PlainConv` with
  `data_init=True`) sets, when the pass reaches it, per unit

      g = init_scale / sigma[t],   b = -mu[t] * init_scale / sigma[t],

  from its output t with kernel v/||v|| (plain layers: the kernel as is)
  and no bias. `init_order`:
    'sequential' (default; the authors' code and the Linen path): the layer
      passes on its initialised output g t + b, so every later layer takes
      its statistics on the outputs of the already-initialised layers.
    'independent': it passes on its un-initialised output (w = v, no bias),
      so all statistics come from one pass of the un-initialised network.
  Batch norms use the batch statistics of the pass as in training and do
  not update their running averages (as Linen's `init`).

  Works eagerly and under `nnx.jit` (e.g. `nnx.jit(data_init)(model, x)`);
  under jit with the init batch sharded over devices the statistics are
  those of the global batch.

  Returns:
    The model's output on the init batch (after the init).
  """
  linen_data_init.check_init_order(init_order)
  targets = [node for _, node in nnx.iter_graph(model)
             if isinstance(node, _DataInitLayer)]
  if not any(isinstance(t, (WeightNorm, _Plain)) for t in targets):
    raise ValueError(f"data_init: {type(model).__name__} has no layer with a "
                     "data-dependent init (WeightNorm, PlainDense, PlainConv).")
  for target in targets:
    target._init_order = init_order
  try:
    return model(*inputs, **kwargs)
  finally:
    for target in targets:
      target._init_order = None
