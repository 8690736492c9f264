"""Array math shared by the Linen layers and the NNX layers (`wn_jax.nnx`).

Weight normalization (the second half of this file): `direction_norm`,
`weight_normalized_kernel` (w = g v/||v||, paper eq. 2) and the
data-dependent init's statistics `data_init_scale_and_bias` (section 2.2),
written once as functions of arrays so both module systems compute the
same numbers.

2-D convolution with an optional per-tap matmul weight gradient
----------------------------------------------------------------

`conv2d(..., weight_grad="per_tap")` computes the same function and the
same gradients as `lax.conv_general_dilated`, but its kernel gradient is
built from kh * kw matmuls instead of XLA's weight-gradient convolution.

Why: on XLA:CPU the forward and input-gradient convolutions of a 3x3
96->96 conv (32x32, batch 100) take about 72 ms each, while the
weight-gradient convolution takes 310-330 ms. XLA emits that one as a
convolution with the batch as its contraction axis, the whole 32x32 output
gradient as its window and a 3x3 output (`window={size=32x32}`,
`f32[96,3,3,96]` in the optimized HLO), a shape Eigen's spatial
convolution, built for small windows and large outputs, handles poorly.
The same sums written as kh * kw plain `dot`s go to the ordinary
Eigen/oneDNN matmul instead and take about half the time; see
`benchmarks/conv_weight_grad.py`. On GPUs the weight-gradient convolution
is fast (on an H100, "per_tap" made the 3x3 weight gradient 1.4-1.8x
slower), so the config keeps "xla" there; "per_tap" is pure lax and runs
on any backend.
"""

import functools
import math
import operator
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

WEIGHT_GRAD_MODES = ("xla", "per_tap")

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# Rows of the [rows, in] x [rows, out] contraction handled per matmul.
# On 2 cores, a single [in, rows] @ [rows, out] with rows ~ 1e5 and in,
# out ~ 100 ran up to 1.6x slower than the same product split into ~32k-row
# chunks (one batched dot, then a sum), presumably because a chunk's
# operands fit in cache: batch 100 at 32x32, 1x1 conv 15.6 -> 9.8 ms,
# 3x3 96->96 ~207 -> ~183 ms; no change at 16x16 (25.6k rows, 1 chunk).
ROWS_PER_CHUNK = 32768

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: int | Sequence[int] = (1, 1),
    padding: Padding = "SAME",
    weight_grad: str = "xla",
    precision: Any = None,
    kernel_dilation: int | Sequence[int] = (1, 1),
) -> jax.Array:
  """2-D convolution, NHWC input and HWIO kernel.

  Args:
    x: [batch, height, width, in_features].
    kernel: [kh, kw, in_features, out_features].
    strides: int or (stride_h, stride_w).
    padding: "SAME", "SAME_LOWER", "VALID", or ((lo_h, hi_h), (lo_w, hi_w))
      (negative values crop, as in `lax.conv_general_dilated`).
    weight_grad: "xla" differentiates `lax.conv_general_dilated` as usual;
      "per_tap" keeps XLA's forward and input gradient but computes the
      kernel gradient as kh * kw matmuls (fast on XLA:CPU). It is a
      `jax.custom_vjp`: reverse mode (grad, vjp) only, no jvp/jacfwd.
    precision: passed to `lax.conv_general_dilated` and to the matmuls.
    kernel_dilation: int or pair; only 1 is supported with "per_tap".

  Returns:
    y: [batch, out_height, out_width, out_features], dtype of `x`.
  """
  if weight_grad not in WEIGHT_GRAD_MODES:
    raise ValueError(
        f"weight_grad must be one of {WEIGHT_GRAD_MODES}, got {weight_grad!r}.")
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(
        "conv2d expects x [batch, height, width, in_features] and kernel "
        f"[kh, kw, in_features, out_features]; got shapes {x.shape} and "
        f"{kernel.shape}.")
  if x.shape[3] != kernel.shape[2]:
    raise ValueError(
        f"in_features of x ({x.shape[3]}) and kernel ({kernel.shape[2]}) "
        "differ; grouped convolutions are not supported.")
  strides = int_pair(strides, "strides")
  dilation = int_pair(kernel_dilation, "kernel_dilation")
  pads = _explicit_padding(padding, x.shape[1:3], kernel.shape[0:2], strides,
                           dilation)

  if weight_grad == "xla":
    return _conv(x, kernel, strides, pads, precision, dilation)
  if dilation != (1, 1):
    raise ValueError(
        f"weight_grad='per_tap' does not support kernel_dilation {dilation}; "
        "use weight_grad='xla'.")
  return _conv_per_tap(x, kernel, strides, pads, precision)


def int_pair(value: Any, name: str) -> tuple[int, int]:
  """(a, b) from an int or a pair of positive ints (a 2-D window, stride or
  dilation); ValueError naming `name` otherwise."""
  values = (value, value) if np.ndim(value) == 0 else tuple(value)
  try:
    pair = tuple(operator.index(v) for v in values)
  except TypeError:
    pair = ()
  if len(pair) != 2 or min(pair) < 1:
    raise ValueError(f"{name} must be a positive int or a pair of them, "
                     f"got {value!r}.")
  return pair


def _explicit_padding(padding, in_hw, kernel_hw, strides, dilation):
  """Returns ((lo_h, hi_h), (lo_w, hi_w)) as a hashable tuple of ints."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "SAME_LOWER", "VALID"):
      raise ValueError("padding must be 'SAME', 'SAME_LOWER', 'VALID' or "
                       f"((lo_h, hi_h), (lo_w, hi_w)), got {padding!r}.")
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation)]
    return tuple(tuple(p) for p in lax.padtype_to_pads(
        in_hw, dilated, strides, padding))
  try:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  except (TypeError, ValueError):
    pads = ()
  if len(pads) != 2:
    raise ValueError("padding must be 'SAME', 'SAME_LOWER', 'VALID' or "
                     f"((lo_h, hi_h), (lo_w, hi_w)), got {padding!r}.")
  return pads


def _conv(x, kernel, strides, pads, precision, dilation=(1, 1)):
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=pads,
      rhs_dilation=dilation, dimension_numbers=_DIMENSION_NUMBERS,
      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_per_tap(x, kernel, strides, pads, precision):
  return _conv(x, kernel, strides, pads, precision)


def _conv_per_tap_fwd(x, kernel, strides, pads, precision):
  return _conv(x, kernel, strides, pads, precision), (x, kernel)


def _conv_per_tap_bwd(strides, pads, precision, residuals, dy):
  x, kernel = residuals
  # The input gradient is exactly what autodiff of the XLA conv gives (a
  # transposed conv, as fast as the forward pass on XLA:CPU).
  # linear_transpose, unlike jax.vjp, does not evaluate the forward conv
  # again when this runs outside jit.
  conv_of_x = lambda x: _conv(x, kernel, strides, pads, precision)
  (dx,) = jax.linear_transpose(
      conv_of_x, jax.ShapeDtypeStruct(x.shape, x.dtype))(dy)
  dkernel = per_tap_kernel_grad(x, dy, kernel.shape[:2], strides, pads,
                                precision)
  return dx, dkernel.astype(kernel.dtype)


_conv_per_tap.defvjp(_conv_per_tap_fwd, _conv_per_tap_bwd)


def per_tap_kernel_grad(
    x: jax.Array,
    dy: jax.Array,
    kernel_hw: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    precision: Any = None,
    rows_per_chunk: int = ROWS_PER_CHUNK,
) -> jax.Array:
  """Kernel gradient of a conv as one matmul per kernel tap.

  dW[i, j] = patch(x_padded, i, j)^T @ dy, where patch(i, j) is the strided
  window of the padded input that tap (i, j) sees: [batch*Ho*Wo, in].

  Args:
    x: [batch, height, width, in_features].
    dy: [batch, out_height, out_width, out_features], cotangent of y.
    kernel_hw: (kh, kw).
    strides: (stride_h, stride_w).
    pads: ((lo_h, hi_h), (lo_w, hi_w)), explicit.
    precision: passed to the matmuls.
    rows_per_chunk: the batch*Ho*Wo rows are split into equal chunks of at
      most about this many, one batched matmul over the chunks, then a sum.

  Returns:
    [kh, kw, in_features, out_features] in float32 for 16-bit inputs (the
    matmuls accumulate there), otherwise in x's dtype.
  """
  kh, kw = kernel_hw
  sh, sw = strides
  batch, _, _, in_features = x.shape
  _, out_h, out_w, out_features = dy.shape
  acc_dtype = jnp.promote_types(jnp.result_type(x, dy), jnp.float32)

  # Pad once; every tap is then a strided slice of this one array. lax.pad
  # (not jnp.pad) because explicit padding may be negative (a crop).
  x_padded = lax.pad(x, jnp.zeros((), x.dtype),
                     ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))

  rows = batch * out_h * out_w
  if rows == 0:
    return jnp.zeros((kh, kw, in_features, out_features), acc_dtype)
  chunks = _num_row_chunks(rows, rows_per_chunk)
  dy_rows = dy.reshape(chunks, rows // chunks, out_features)
  # Formulations tried for the 3x3 96->96 32x32 batch-100 case (XLA:CPU
  # pinned to 2 cores, weight gradient alone; XLA's conv: ~340 ms):
  #   this loop of kh*kw dots                                ~185-200 ms
  #   one GEMM on an im2col tensor [rows, kh*kw*in]           ~265 ms
  #   x shifted in W, dy shifted in H, one
  #   [rows, kw*in]^T @ [rows, kh*out] GEMM                    ~210 ms
  # The im2col tensor is kh*kw times the input and writing it costs more
  # than the one bigger GEMM saves; the shifted variant is no faster and
  # needs phase bookkeeping for strides. In the loop XLA folds
  # slice(pad(x)) to x for an unpadded tap, so that one copies nothing.
  taps = []
  for i in range(kh):
    for j in range(kw):
      patch = lax.slice(
          x_padded,
          (0, i, j, 0),
          (batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1,
           in_features),
          (1, sh, sw, 1))
      patch_rows = patch.reshape(chunks, rows // chunks, in_features)
      # [chunks, rows/chunks, in]^T @ [chunks, rows/chunks, out], batched
      # over chunks: a plain GEMM for Eigen/oneDNN, then a cheap sum.
      per_chunk = lax.dot_general(
          patch_rows, dy_rows, (((1,), (1,)), ((0,), (0,))),
          precision=precision, preferred_element_type=acc_dtype)
      taps.append(per_chunk.sum(axis=0))
  return jnp.stack(taps).reshape(kh, kw, in_features, out_features)


def _num_row_chunks(rows, rows_per_chunk):
  """Smallest divisor of `rows` giving chunks of at most ~`rows_per_chunk`."""
  target = max(1, -(-rows // rows_per_chunk))
  for chunks in range(target, 2 * target + 1):
    if rows % chunks == 0:
      return chunks
  return 1


# Weight normalization (paper eq. 2) and its data-dependent init (section 2.2).

# ||v|| = sqrt(sum v^2 + NORM_EPSILON): keeps w = g v/||v|| and its gradients
# finite for an all-zero unit of v (a pruned or dead unit; then w = 0 and
# d w/d v = g/sqrt(NORM_EPSILON)), and leaves every other norm unchanged in
# float32 (a unit of v ~ N(0, 0.05) with fan-in 27 has sum v^2 ~ 0.07, whose
# float32 spacing is ~7e-9). The same value as flax.linen.WeightNorm's.
NORM_EPSILON = 1e-12


def batch_mean(x: Array, axis_name: str | None, num_feature_dims: int = 1) -> Array:
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


def batch_mean_and_var(x: Array, axis_name: str | None,
                       num_feature_dims: int = 1) -> tuple[Array, Array]:
  """Per-feature mean and biased variance (mean of squared deviations)."""
  mean = batch_mean(x, axis_name, num_feature_dims)
  var = batch_mean(jnp.square(x.astype(jnp.float32) - mean), axis_name,
                   num_feature_dims)
  return mean, var


def data_init_scale_and_bias(
    t: Array,
    init_scale: float,
    epsilon: float,
    axis_name: str | None = None,
    num_feature_dims: int = 1,
    layer: str = "a layer",
) -> tuple[Array, Array]:
  """The data-dependent init (paper section 2.2) from a layer's output t.

  Args:
    t: [..., *F] output of the layer on the init batch with unit-norm (WN)
      or unscaled (`normal`) kernel and no bias.
    init_scale: wanted std of every unit's pre-activation.
    epsilon: added to the variance.
    axis_name: mapped axis to average the statistics over (shard_map/pmap).
    num_feature_dims: how many trailing axes of t index the features.
    layer: the layer's name, for the messages.

  Returns:
    (scale, bias), float32 of shape F: scale = init_scale/sqrt(var[t] + eps),
    bias = -mean[t] * scale, so scale * t + bias has mean 0 and std
    init_scale per unit on the init batch.

  A unit whose variance over the init batch is at most `epsilon` (a
  constant batch such as `jnp.ones`, a constant feature, or a unit
  connected to nothing, like a MADE's first output) has no scale to
  measure: it takes scale 1 (WN: g = 1, a unit-norm w; a plain layer: its
  kernel as drawn) instead of init_scale/sqrt(epsilon) (~1e4), its bias
  still centres it, and a `UserWarning` counts such units (eagerly and
  under jit, through `jax.debug.callback`). Every other unit's scale is
  the formula's, to the bit. Fewer than 2
  values per unit over the reduced axes (a batch of one example in a dense
  layer) is a ValueError: no standard deviation exists.
  """
  values_per_unit = math.prod(t.shape[:t.ndim - num_feature_dims])
  if values_per_unit < 2 and axis_name is None:
    raise ValueError(
        f"The data-dependent init of {layer} takes each unit's mean and standard deviation "
        f"over the init batch, but its output {tuple(t.shape)} has {values_per_unit} value "
        "per unit. Pass a batch of real examples (the paper uses 100-500), or initialise "
        "without data: `with wn_jax.no_data_init(): model.init(...)` (Linen), or skip "
        "`wn_jax.nnx.data_init` (NNX).")
  mean, var = batch_mean_and_var(t, axis_name, num_feature_dims)
  degenerate = var <= epsilon
  scale = jnp.where(degenerate, 1.0, init_scale * lax.rsqrt(var + epsilon))
  jax.debug.callback(functools.partial(_warn_degenerate_units, layer=layer, epsilon=epsilon),
                     jnp.sum(degenerate), degenerate.size)
  return scale, -mean * scale


def _warn_degenerate_units(count, total, *, layer: str, epsilon: float) -> None:
  if int(count):
    warnings.warn(
        f"Data-dependent init of {layer}: {int(count)} of {int(total)} units have a variance "
        f"<= {epsilon:g} on the init batch (a constant batch or feature?); they get scale 1 "
        "(WN: g = 1) instead of init_scale/sqrt(epsilon). Init on real examples, "
        "or without data (`wn_jax.no_data_init()`).", UserWarning, stacklevel=2)


# Where g starts without the data-dependent init: 'norm' (g = ||v||, so
# w = v: the layer starts as the plain layer with kernel v; the authors'
# Keras wrapper) or 'one' (g = 1: every unit's w has norm 1; the default of
# the authors' Lasagne WeightNormLayer).
G_STARTS = ("norm", "one")


def check_g_start(g_start: str) -> None:
  """Raises ValueError naming the valid choices for an unknown g start."""
  if g_start not in G_STARTS:
    raise ValueError(f"g_start must be one of {G_STARTS}, got {g_start!r}.")


def start_scale(norm: Array, g_start: str) -> Array:
  """g's start without the data-dependent init, float32 of norm's shape:
  ||v|| itself ('norm') or ones ('one'); `norm` is `direction_norm(v)`
  reshaped to the feature shape."""
  check_g_start(g_start)
  norm = norm.astype(jnp.float32)
  return norm if g_start == "norm" else jnp.ones_like(norm)


def canonical_axes(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  """Kernel feature axes as sorted non-negative ints; ValueError if invalid."""
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
  axes = canonical_axes(feature_axes, v.ndim)
  v32 = v.astype(jnp.float32)
  reduce = tuple(a for a in range(v.ndim) if a not in axes)
  return jnp.sqrt(jnp.sum(jnp.square(v32), axis=reduce, keepdims=True) + norm_epsilon)


def weight_normalized_kernel(v: Array, g: Array, feature_axes: int | Sequence[int] = -1,
                             norm_epsilon: float = NORM_EPSILON) -> Array:
  """w = g v/||v|| (eq. 2), float32; g has the shape of v's feature axes."""
  norm = direction_norm(v, feature_axes, norm_epsilon)
  g = g.astype(jnp.float32).reshape(norm.shape)
  return v.astype(jnp.float32) * (g / norm)


def einsum_kernel_and_output(einsum_str: str) -> tuple[str, str]:
  """'bi,io->bo' -> ('io', 'bo'): the kernel's and the output's subscripts."""
  einsum_str = einsum_str.replace(" ", "")
  inputs, output = einsum_str.split("->")
  return inputs.split(",")[1], output


def check_einsum_feature_layout(einsum_str: str, feature_axes: tuple[int, ...],
                                layer: str) -> None:
  """Raises unless the einsum's output subscripts end with its kernel's
  feature subscripts (at `feature_axes`), in that order: the layout the
  weight-norm wrappers need. `layer` names the einsum in the message."""
  kernel_subscripts, output = einsum_kernel_and_output(einsum_str)
  features = "".join(kernel_subscripts[a] for a in feature_axes)
  if not output.endswith(features):
    raise ValueError(
        f"WeightNorm of {layer}({einsum_str!r}): the output subscripts "
        f"{output!r} must end with the feature subscripts {features!r} "
        f"(feature_axes {feature_axes}), in that order.")


def check_nhwc(x: jax.Array, layer: str) -> None:
  """Raises unless x is NHWC [batch, height, width, channels] (`layer`: its user)."""
  if x.ndim != 4:
    raise ValueError(f"{layer} expects NHWC input [batch, height, width, channels], "
                     f"got shape {x.shape}.")
