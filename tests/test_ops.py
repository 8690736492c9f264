"""Tests of `ops.conv2d`: the per-tap weight gradient equals XLA's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from wn_jax import ops

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Full float32 convs and matmuls, so that the comparisons below also hold on
# GPUs, where the default precision rounds inputs to TF32 (10-bit mantissa).
# On CPU it changes nothing; it also checks `precision` is passed through.
HIGHEST = lax.Precision.HIGHEST

# (x shape, kernel shape, strides, padding): every way the per-tap slices
# can go wrong: padding on one side only, strides that skip the last
# row/column, non-square inputs and kernels, negative (cropping) padding.
CASES = {
    "3x3_same": ((2, 8, 8, 3), (3, 3, 3, 4), 1, "SAME"),
    "3x3_valid": ((2, 8, 8, 3), (3, 3, 3, 4), 1, "VALID"),
    "1x1": ((2, 6, 6, 5), (1, 1, 5, 3), 1, "SAME"),
    "1x1_stride2_valid": ((2, 7, 7, 3), (1, 1, 3, 4), 2, "VALID"),
    "3x3_stride2_same_even": ((2, 8, 8, 3), (3, 3, 3, 4), 2, "SAME"),
    "3x3_stride2_same_odd": ((2, 7, 9, 3), (3, 3, 3, 4), 2, "SAME"),
    "3x3_stride2_valid_odd": ((2, 9, 9, 3), (3, 3, 3, 4), 2, "VALID"),
    "explicit_padding": ((2, 7, 7, 3), (3, 3, 3, 4), 1, ((2, 0), (1, 1))),
    "explicit_crop_stride2": ((2, 9, 8, 3), (3, 3, 3, 2), (2, 1),
                              ((0, -1), (1, 2))),
    "nonsquare_kernel": ((2, 7, 10, 3), (3, 2, 3, 4), (1, 2), "SAME"),
    "5x5_same_lower_odd": ((1, 11, 5, 2), (5, 5, 2, 3), 1, "SAME_LOWER"),
}


# Test data from numpy: jax.random inside jit costs ~0.7 s of compile each.
def _normal(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _inputs(x_shape, kernel_shape, dtype=jnp.float32):
  return _normal(x_shape, 0, dtype), _normal(kernel_shape, 1, dtype)


def _loss_fn(weight_grad, strides, padding, precision=HIGHEST):
  """A random linear function of y, so grad gives the VJP of a random dy."""
  def loss(x, kernel):
    y = ops.conv2d(x, kernel, strides, padding, weight_grad=weight_grad,
                   precision=precision)
    c = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    return jnp.sum(y.astype(jnp.float32) * c)
  return loss


def _grads(weight_grad, strides, padding, precision=HIGHEST):
  """Jitted (d loss/dx, d loss/dkernel); one compile instead of per-op ones."""
  return jax.jit(jax.grad(
      _loss_fn(weight_grad, strides, padding, precision), (0, 1)))


def _assert_close(actual, desired, rtol=1e-4):
  """Float32 sums of ~100 products: relative to the largest entry."""
  desired = np.asarray(desired, np.float32)
  atol = rtol * max(1.0, float(np.max(np.abs(desired))))
  np.testing.assert_allclose(np.asarray(actual, np.float32), desired,
                             rtol=rtol, atol=atol)


def _numpy_kernel_grad(x, dy, kernel_hw, strides, pads):
  """dW[i, j] = sum over (b, h, w) of x_pad[b, h*s + i, w*s + j] dy[b, h, w]."""
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  (lo_h, hi_h), (lo_w, hi_w) = pads
  # Negative padding crops; apply it as a crop after a non-negative pad.
  x = np.pad(x, ((0, 0), (max(lo_h, 0), max(hi_h, 0)),
                 (max(lo_w, 0), max(hi_w, 0)), (0, 0)))
  x = x[:, max(-lo_h, 0):x.shape[1] - max(-hi_h, 0),
        max(-lo_w, 0):x.shape[2] - max(-hi_w, 0)]
  (kh, kw), (sh, sw) = kernel_hw, strides
  _, out_h, out_w, _ = dy.shape
  dw = np.zeros((kh, kw, x.shape[3], dy.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw]
      dw[i, j] = np.einsum("bhwc,bhwo->co", patch, dy)
  return dw


@pytest.mark.parametrize("name", sorted(CASES))
def test_per_tap_matches_xla(name):
  x_shape, kernel_shape, strides, padding = CASES[name]
  x, kernel = _inputs(x_shape, kernel_shape)

  y_xla = ops.conv2d(x, kernel, strides, padding, "xla", HIGHEST)
  y_tap = ops.conv2d(x, kernel, strides, padding, "per_tap", HIGHEST)
  _assert_close(y_tap, y_xla, rtol=1e-6)  # the same XLA conv

  grads_xla = _grads("xla", strides, padding)(x, kernel)
  grads_tap = _grads("per_tap", strides, padding)(x, kernel)
  _assert_close(grads_tap[0], grads_xla[0])
  _assert_close(grads_tap[1], grads_xla[1])
  assert grads_tap[1].shape == kernel.shape
  assert grads_tap[1].dtype == kernel.dtype


# The explicit ((lo_h, hi_h), (lo_w, hi_w)) padding of each case, worked out
# by hand: SAME pads out = ceil(in / stride) outputs with total padding
# (out - 1) * stride + k - in, the odd one extra at the end (SAME) or at the
# start (SAME_LOWER).
EXPLICIT_PADS = {
    "3x3_same": ((1, 1), (1, 1)),                 # 8 -> 8: total 2
    "3x3_stride2_same_even": ((0, 1), (0, 1)),    # 8 -> 4: total 3*2+3-8 = 1
    "3x3_stride2_same_lower_even": ((1, 0), (1, 0)),
    "3x3_stride2_same_odd": ((1, 1), (1, 1)),     # 7 -> 4: 2; 9 -> 5: 2
    "explicit_crop_stride2": ((0, -1), (1, 2)),
    "nonsquare_kernel": ((1, 1), (0, 0)),         # 7 -> 7 (k 3): 2; 10 -> 5 (k 2, s 2): 0
    "5x5_same_lower_odd": ((2, 2), (2, 2)),       # 11 -> 11, 5 -> 5: total 4
}
CASES["3x3_stride2_same_lower_even"] = ((2, 8, 8, 3), (3, 3, 3, 4), 2, "SAME_LOWER")


def _strides(case):
  strides = case[2]
  return (strides, strides) if isinstance(strides, int) else strides


def _numpy_conv(x, kernel, strides, pads):
  """y[b, h, w] = sum_ij x_pad[b, h*s + i, w*s + j] @ kernel[i, j], float64."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  (lo_h, hi_h), (lo_w, hi_w) = pads
  x = np.pad(x, ((0, 0), (max(lo_h, 0), max(hi_h, 0)),
                 (max(lo_w, 0), max(hi_w, 0)), (0, 0)))
  x = x[:, max(-lo_h, 0):x.shape[1] - max(-hi_h, 0),
        max(-lo_w, 0):x.shape[2] - max(-hi_w, 0)]
  (kh, kw), (sh, sw) = kernel.shape[:2], strides
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw]
      y += patch @ kernel[i, j]
  return y


@pytest.mark.parametrize("name", ["3x3_stride2_same_odd", "3x3_stride2_same_even",
                                  "explicit_crop_stride2", "nonsquare_kernel"])
def test_kernel_grad_matches_numpy(name):
  """Independent of XLA: guards against both modes sharing a padding bug."""
  x_shape, kernel_shape, strides, padding = CASES[name]
  x, kernel = _inputs(x_shape, kernel_shape)
  conv = lambda k: ops.conv2d(x, k, strides, padding, "per_tap", HIGHEST)
  dy = _normal(jax.eval_shape(conv, kernel).shape, 3)
  (dkernel,) = jax.jit(lambda k, dy: jax.vjp(conv, k)[1](dy))(kernel, dy)
  _assert_close(dkernel, _numpy_kernel_grad(x, dy, kernel.shape[:2], _strides(CASES[name]),
                                            EXPLICIT_PADS[name]))


@pytest.mark.parametrize("name", ["3x3_same", "3x3_stride2_same_even",
                                  "3x3_stride2_same_lower_even", "5x5_same_lower_odd",
                                  "nonsquare_kernel"])
@pytest.mark.parametrize("weight_grad", ["xla", "per_tap"])
def test_forward_matches_numpy(name, weight_grad):
  """String padding resolves to the hand-computed explicit padding."""
  x_shape, kernel_shape, strides, padding = CASES[name]
  x, kernel = _inputs(x_shape, kernel_shape)
  _assert_close(ops.conv2d(x, kernel, strides, padding, weight_grad, HIGHEST),
                _numpy_conv(x, kernel, _strides(CASES[name]), EXPLICIT_PADS[name]))


@pytest.mark.parametrize("rows_per_chunk", [7, 16, 20])
def test_chunked_kernel_grad_matches_xla(rows_per_chunk):
  """The rows split into several chunks (the paper network's 32x32 layers
  use four at batch 100): the chunk sums must add up to XLA's gradient."""
  x_shape, kernel_shape, strides, padding = CASES["3x3_stride2_same_odd"]
  x, kernel = _inputs(x_shape, kernel_shape)  # 2 x 4 x 5 = 40 output rows
  pads = EXPLICIT_PADS["3x3_stride2_same_odd"]
  conv = lambda k: lax.conv_general_dilated(
      x, k, _strides(CASES["3x3_stride2_same_odd"]), pads,
      dimension_numbers=DIMENSION_NUMBERS, precision=HIGHEST)
  dy = _normal(jax.eval_shape(conv, kernel).shape, 3)
  (expected,) = jax.vjp(conv, kernel)[1](dy)
  grad = functools.partial(ops.per_tap_kernel_grad, kernel_hw=(3, 3), strides=(2, 2),
                           pads=pads, precision=HIGHEST, rows_per_chunk=rows_per_chunk)
  jaxpr = jax.make_jaxpr(grad)(x, dy)
  chunk_counts = {e.invars[0].aval.shape[0] for e in jaxpr.eqns
                  if e.primitive.name == "dot_general"}
  assert len(chunk_counts) == 1 and chunk_counts.pop() > 1  # really chunked
  _assert_close(jax.jit(grad)(x, dy), expected)


def test_per_tap_eager_matches_jit():
  """The custom VJP also runs op by op, outside jit (the other tests jit)."""
  x_shape, kernel_shape, strides, padding = CASES["3x3_stride2_same_odd"]
  x, kernel = _inputs(x_shape, kernel_shape)
  loss = _loss_fn("per_tap", strides, padding)
  value_eager, grads_eager = jax.value_and_grad(loss, (0, 1))(x, kernel)
  value_jit, grads_jit = jax.jit(jax.value_and_grad(loss, (0, 1)))(x, kernel)
  _assert_close(value_eager, value_jit)
  _assert_close(grads_eager[0], grads_jit[0])
  _assert_close(grads_eager[1], grads_jit[1])
  grads_xla = _grads("xla", strides, padding)(x, kernel)
  _assert_close(grads_eager[1], grads_xla[1])


def test_per_tap_bfloat16():
  """bf16 in, bf16 gradients out, close to the float32 gradients.

  Default precision here, so the precision=None path is covered too.
  """
  x_shape, kernel_shape, strides, padding = CASES["3x3_same"]
  x, kernel = _inputs(x_shape, kernel_shape, jnp.bfloat16)
  grads_bf16 = _grads("per_tap", strides, padding, precision=None)(x, kernel)
  assert grads_bf16[0].dtype == jnp.bfloat16
  assert grads_bf16[1].dtype == jnp.bfloat16
  # Reference: the same bf16 values, computed in float32 by XLA.
  grads_f32 = _grads("xla", strides, padding)(
      x.astype(jnp.float32), kernel.astype(jnp.float32))
  # bf16 has an 8-bit mantissa; y and dy are rounded to it on the way.
  _assert_close(grads_bf16[0], grads_f32[0], rtol=3e-2)
  _assert_close(grads_bf16[1], grads_f32[1], rtol=3e-2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_grad="im2col"), "weight_grad must be one of"),
    (dict(weight_grad="per_tap", kernel_dilation=2), "kernel_dilation"),
    (dict(padding="FULL"), "padding must be"),
    (dict(padding=((1, 1),)), "padding must be"),
    (dict(strides=0), "strides must be"),
    (dict(strides=(1, 1, 1)), "strides must be"),
])
def test_bad_arguments_raise(kwargs, message):
  x, kernel = _inputs((1, 5, 5, 2), (3, 3, 2, 3))
  with pytest.raises(ValueError, match=message):
    ops.conv2d(x, kernel, **kwargs)


def test_bad_shapes_raise():
  x, kernel = _inputs((1, 5, 5, 2), (3, 3, 4, 3))
  with pytest.raises(ValueError, match="in_features"):
    ops.conv2d(x, kernel, weight_grad="per_tap")
  with pytest.raises(ValueError, match="expects x"):
    ops.conv2d(x[0], kernel, weight_grad="per_tap")


def test_unknown_weight_grad_lists_valid_modes():
  x, kernel = _inputs((1, 5, 5, 2), (3, 3, 2, 3))
  with pytest.raises(ValueError) as error:
    ops.conv2d(x, kernel, weight_grad="fast")
  assert "'xla'" in str(error.value) and "'per_tap'" in str(error.value)
