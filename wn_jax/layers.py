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

Any layer: ``WeightNorm``
-------------------------
``WeightNorm(layer)`` weight-normalizes any Linen layer whose only parameter
(besides its bias) is a kernel: nn.Dense, nn.DenseGeneral, nn.Conv of any
rank (strides, dilation, feature_group_count), nn.ConvTranspose, nn.Einsum.
It owns ``v`` (in the wrapped layer's kernel layout), ``g`` and ``b``, runs
the wrapped layer as a pure function of ``w = g v/||v||``, and normalizes
over every kernel axis but ``feature_axes`` (default: the output features).
``WNDense``, ``WNConv``, ``WNConvTranspose`` are ``WeightNorm`` of
``nn.Dense``, ``Conv2D`` (``ops.conv2d``, with the per-tap kernel gradient)
and ``nn.ConvTranspose``, sharing their scope so their parameters are
``v``, ``g``, ``b`` directly under the layer's name.

``||v|| = sqrt(sum v^2 + norm_epsilon)``, ``norm_epsilon = NORM_EPSILON =
1e-12``: an all-zero unit of ``v`` gives ``w = 0`` with finite gradients
(PyTorch's ``weight_norm`` gives NaN there), and ordinary norms are
unchanged in float32. The init's ``epsilon`` (1e-8) guards ``var[t]``.

``init_order`` ('sequential' | 'independent') chooses how the init extends
over a deep network; see ``WeightNorm``.
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
# The inference-only layer kind `wn_jax.fold` produces: plain nn.Conv /
# nn.Dense with kernel and bias, no normalization (not a training choice).
FOLDED = "folded"

# Authors' code: v ~ N(0, 0.05) for weight norm and for batch norm's kernel.
default_v_init = nn.initializers.normal(stddev=0.05)


# ||v|| = sqrt(sum v^2 + NORM_EPSILON): keeps w = g v/||v|| and its gradients
# finite for an all-zero unit of v (a pruned or dead unit; then w = 0 and
# d w/d v = g/sqrt(NORM_EPSILON)), and leaves every other norm unchanged in
# float32 (a unit of v ~ N(0, 0.05) with fan-in 27 has sum v^2 ~ 0.07, whose
# float32 spacing is ~7e-9). The same value as flax.linen.WeightNorm's.
NORM_EPSILON = 1e-12

# How the data-dependent init extends to a deep network (see `WeightNorm`).
INIT_ORDERS = ("sequential", "independent")


def check_init_order(init_order: str) -> None:
  """Raises ValueError naming the valid choices for an unknown init order."""
  if init_order not in INIT_ORDERS:
    raise ValueError(
        f"Unknown init_order {init_order!r}; valid ones are "
        f"{', '.join(INIT_ORDERS)}.")


def _batch_mean(x: Array, axis_name: str | None, num_feature_dims: int = 1) -> Array:
  """Per-feature mean over every leading axis, float32: [..., *F] -> F.

  The leading axes are batch and spatial (sequence) axes; the last
  `num_feature_dims` axes index the features. Under jit with a sharded batch
  this is already the global mean; inside shard_map/pmap `axis_name`
  averages the per-device means (equal shards).
  """
  mean = jnp.mean(x.astype(jnp.float32), axis=tuple(range(x.ndim - num_feature_dims)))
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)
  return mean


def _batch_mean_and_var(x: Array, axis_name: str | None,
                        num_feature_dims: int = 1) -> tuple[Array, Array]:
  """Per-feature mean and biased variance (mean of squared deviations)."""
  mean = _batch_mean(x, axis_name, num_feature_dims)
  var = _batch_mean(jnp.square(x.astype(jnp.float32) - mean), axis_name,
                    num_feature_dims)
  return mean, var


def data_init_scale_and_bias(
    t: Array,
    init_scale: float,
    epsilon: float,
    axis_name: str | None = None,
    num_feature_dims: int = 1,
) -> tuple[Array, Array]:
  """The data-dependent init (paper section 2.2) from a layer's output t.

  Args:
    t: [..., *F] output of the layer on the init batch with unit-norm (WN)
      or unscaled (`normal`) kernel and no bias.
    init_scale: wanted std of every unit's pre-activation.
    epsilon: added to the variance (a constant unit gets a finite scale).
    axis_name: mapped axis to average the statistics over (shard_map/pmap).
    num_feature_dims: how many trailing axes of t index the features.

  Returns:
    (scale, bias), float32 of shape F: scale = init_scale/sqrt(var[t] + eps),
    bias = -mean[t] * scale, so scale * t + bias has mean 0 and std
    init_scale per unit on the init batch.
  """
  mean, var = _batch_mean_and_var(t, axis_name, num_feature_dims)
  scale = init_scale * lax.rsqrt(var + epsilon)
  return scale, -mean * scale


def _canonical_axes(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  if not axes:
    raise ValueError("feature_axes must name at least one axis of the kernel.")
  canonical = []
  for axis in axes:
    if not -ndim <= axis < ndim:
      raise ValueError(f"feature_axes {axes} out of range for a kernel with "
                       f"{ndim} axes.")
    canonical.append(axis % ndim)
  if len(set(canonical)) != len(canonical):
    raise ValueError(f"feature_axes {axes} repeat an axis.")
  return tuple(sorted(canonical))


def direction_norm(v: Array, feature_axes: int | Sequence[int] = -1,
                   norm_epsilon: float = NORM_EPSILON) -> Array:
  """||v|| per output unit, float32, keeping v's rank for broadcasting.

  ||v|| = sqrt(sum v^2 + norm_epsilon), the sum over every axis of v but
  `feature_axes`: v [kh, kw, in, out] -> [1, 1, 1, out] for feature_axes -1.
  """
  axes = _canonical_axes(feature_axes, v.ndim)
  v32 = v.astype(jnp.float32)
  reduce = tuple(a for a in range(v.ndim) if a not in axes)
  return jnp.sqrt(jnp.sum(jnp.square(v32), axis=reduce, keepdims=True) + norm_epsilon)


def weight_normalized_kernel(v: Array, g: Array, feature_axes: int | Sequence[int] = -1,
                             norm_epsilon: float = NORM_EPSILON) -> Array:
  """w = g v/||v|| (eq. 2), float32; g has the shape of v's feature axes."""
  norm = direction_norm(v, feature_axes, norm_epsilon)
  g = g.astype(jnp.float32).reshape(norm.shape)
  return v.astype(jnp.float32) * (g / norm)


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
    kernel_subscripts, output = _einsum_kernel_and_output(layer.einsum_str)
    return tuple(i for i, s in enumerate(kernel_subscripts) if s in output)
  raise ValueError(
      f"WeightNorm has no default feature_axes for {type(layer).__name__}; pass "
      "feature_axes=<the axes of its kernel that index the output features>.")


def _einsum_kernel_and_output(einsum_str: str) -> tuple[str, str]:
  einsum_str = einsum_str.replace(" ", "")
  inputs, output = einsum_str.split("->")
  return inputs.split(",")[1], output


class WeightNorm(nn.Module):
  """Weight normalization of any Linen layer with a kernel (paper eq. 2).

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
  one forward pass. `data_init=False`: g = ||v||, b = 0, so w = v at start.

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
  kernel_name: str = "kernel"
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, *args, **kwargs) -> Array:
    check_init_order(self.init_order)
    updates = {"use_bias": False} if hasattr(self.layer, "use_bias") else {}
    layer = self.layer.clone(parent=None, **updates)
    use_bias = (self.use_bias if self.use_bias is not None
                else getattr(self.layer, "use_bias", True))
    structs = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in args]
    kernel_struct = self._kernel_struct(layer, structs, kwargs)
    axes = _canonical_axes(
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
    data_init = self.data_init and self.is_initializing()
    if data_init:
      # t = layer(x; v/||v||) on the init batch; g, b standardise it.
      t = run((v.astype(jnp.float32) / norm).astype(v.dtype))
      g_init, b_init = data_init_scale_and_bias(
          t, self.init_scale, self.epsilon, self.axis_name, len(feature_shape))
    else:
      g_init = norm_features
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
    if self.layer.einsum_str is None:
      return
    kernel_subscripts, output = _einsum_kernel_and_output(self.layer.einsum_str)
    features = "".join(kernel_subscripts[a] for a in axes)
    if not output.endswith(features):
      raise ValueError(
          f"WeightNorm of nn.Einsum({self.layer.einsum_str!r}): the output "
          f"subscripts {output!r} must end with the feature subscripts "
          f"{features!r} (feature_axes {axes}), in that order.")


class Conv2D(nn.Module):
  """2-D convolution (NHWC, HWIO kernel) through `wn_jax.ops.conv2d`.

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
    if x.ndim != 4:
      raise ValueError(
          f"{type(self).__name__} expects NHWC input [batch, height, width, "
          f"channels], got shape {x.shape}.")
    x = jnp.asarray(x, self.dtype)
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features),
                        self.param_dtype)
    y = ops.conv2d(x, kernel.astype(self.dtype), strides=self.strides,
                   padding=self.padding, weight_grad=self.weight_grad)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class _WeightNormOf(nn.Module):
  """Base of WNDense/WNConv/WNConvTranspose: `WeightNorm(self._layer())` in
  this module's own scope (`nn.share_scope`), so their parameters stay
  exactly `v`, `g`, `b` directly under the layer's name."""

  def _layer(self) -> nn.Module:
    raise TypeError(f"{type(self).__name__} must define _layer(), the layer to wrap.")

  def setup(self):
    self.weight_norm = WeightNorm(
        self._layer(), feature_axes=-1, use_bias=self.use_bias,
        init_scale=self.init_scale, data_init=self.data_init,
        init_order=self.init_order, epsilon=self.epsilon,
        norm_epsilon=self.norm_epsilon, v_init=self.v_init,
        param_dtype=self.param_dtype, axis_name=self.axis_name)
    nn.share_scope(self, self.weight_norm)

  def __call__(self, x: Array) -> Array:
    return self.weight_norm(jnp.asarray(x, self.dtype))


class WNDense(_WeightNormOf):
  """Weight-normalized dense layer, y = x (g v/||v||) + b (paper eq. 2).

  `WeightNorm(nn.Dense(features))` with the paper's v ~ N(0, 0.05).

  Attributes:
    features: number of output units.
    use_bias: add `b`. Set False when mean-only batch norm follows; the
      data-dependent init then sets only `g`.
    init_scale: std of each unit's pre-activation after the data-dependent
      init (paper section 2.2).
    data_init: True: `model.init` is the data-dependent init. False:
      `g = ||v||`, `b = 0`, so `w = v` at start.
    init_order: 'sequential' or 'independent' (see `WeightNorm`).
    epsilon: added to the init batch variance, so a constant or dead unit
      gets a finite `g` (the authors' PixelCNN++ code uses 1e-8).
    norm_epsilon: added to sum v^2 inside ||v|| (`NORM_EPSILON`).
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
  init_order: str = "sequential"
  epsilon: float = 1e-8
  norm_epsilon: float = NORM_EPSILON
  v_init: Initializer = default_v_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  def _layer(self) -> nn.Module:
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype)


class WNConv(_WeightNormOf):
  """Weight-normalized 2-D convolution (NHWC), y = conv(x, g v/||v||) + b.

  `WeightNorm(Conv2D(...))`, i.e. through `wn_jax.ops.conv2d`. For other
  ranks, groups or dilation use `WeightNorm(nn.Conv(...))`.

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
  init_order: str = "sequential"
  epsilon: float = 1e-8
  norm_epsilon: float = NORM_EPSILON
  v_init: Initializer = default_v_init
  conv_weight_grad: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  def _layer(self) -> nn.Module:
    return Conv2D(self.features, self.kernel_size, strides=self.strides,
                  padding=self.padding, weight_grad=self.conv_weight_grad,
                  dtype=self.dtype, param_dtype=self.param_dtype)


class WNConvTranspose(_WeightNormOf):
  """Weight-normalized 2-D transposed convolution (NHWC), as `nn.ConvTranspose`.

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
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  def _layer(self) -> nn.Module:
    if len(self.kernel_size) != 2:
      raise ValueError(f"WNConvTranspose is 2-D; got kernel_size {self.kernel_size}"
                       " (use WeightNorm(nn.ConvTranspose(...)) for other ranks).")
    return nn.ConvTranspose(self.features, self.kernel_size, strides=self.strides,
                            padding=self.padding, dtype=self.dtype,
                            param_dtype=self.param_dtype)

  def __call__(self, x: Array) -> Array:
    if x.ndim != 4:
      raise ValueError(
          f"{type(self).__name__} expects NHWC input [batch, height, width, "
          f"channels], got shape {x.shape}.")
    return super().__call__(x)


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
  data_init = module.data_init and module.is_initializing()
  if data_init:
    scale_init, b_init = data_init_scale_and_bias(
        y, module.init_scale, module.epsilon, module.axis_name)
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
  init_order: str = "sequential"
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
  if parent.parameterization == FOLDED:
    # Inference form written by `wn_jax.fold`: a plain nn.Conv / nn.Dense
    # holding the folded kernel and bias; the same in train and eval mode.
    if conv:
      layer = nn.Conv(parent.features, parent.kernel_size, strides=parent.strides,
                      padding=parent.padding, dtype=parent.dtype, name="linear")
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
    'folded':  inference only, written by `wn_jax.fold`: a plain nn.Conv
               with the folded kernel and bias (params `linear/kernel`,
               `linear/bias`), no normalization, `train` ignored.
  `data_init=False` switches the data-dependent init off for every
  parameterization (WN then starts at `g = ||v||`, `b = 0`).
  `init_order` ('sequential' or 'independent', see `WeightNorm`) says what
  the layer passes on during the data-dependent init.
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
  init_order: str = "sequential"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    return _parameterized(self, x, train, {}, conv=False)
