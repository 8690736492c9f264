"""DRAW's attention filterbanks against a direct computation."""

import math

import jax.numpy as jnp
import numpy as np

from wn_jax.models import draw_attention as att


def _direct_filter(center, delta, sigma2, n, size):
  """F[i, a] by loops, as the reference code defines it."""
  f = np.zeros((n, size))
  for i in range(n):
    mu = center + (i - n / 2 + 0.5) * delta
    for a in range(size):
      f[i, a] = math.exp(-(a - mu) ** 2 / (2 * sigma2))
    f[i] /= f[i].sum() + 1e-4
  return f


def test_a_2x2_read_of_a_known_image_against_loops():
  # A 6x8 image whose pixel (r, c) holds 10 r + c.
  image = np.add.outer(10.0 * np.arange(6), np.arange(8))
  linear = np.array([[0.2, -0.4, math.log(0.5), math.log(1.3), math.log(2.0)]])
  attention = att.attention_from_linear(jnp.asarray(linear, jnp.float32), 6, 8, n=2)
  g_y, g_x = (0.2 + 1) / 2 * 6, (-0.4 + 1) / 2 * 8
  delta = (8 - 1) / (2 - 1) * 0.5
  np.testing.assert_allclose([attention.center_y[0], attention.center_x[0], attention.delta[0],
                              attention.sigma2[0], attention.gamma[0]],
                             [g_y, g_x, delta, 1.3, 2.0], rtol=1e-6)
  f_y = _direct_filter(g_y, delta, 1.3, 2, 6)
  f_x = _direct_filter(g_x, delta, 1.3, 2, 8)
  expected = np.zeros((2, 2))
  for i in range(2):
    for j in range(2):
      expected[i, j] = 2.0 * sum(f_y[i, r] * image[r, c] * f_x[j, c]
                                 for r in range(6) for c in range(8))
  got = att.read(jnp.asarray(image[None], jnp.float32), attention, n=2)
  np.testing.assert_allclose(got[0], expected, rtol=1e-5)
  # Filters centred inside the image see a weighted mean of its pixels: the
  # first row's glimpse lies between the image's rows, scaled by gamma = 2.
  assert 0 < got[0, 0, 0] / 2 < image.max()


def test_write_is_the_transpose_of_read_up_to_gamma():
  rng = np.random.default_rng(0)
  linear = jnp.asarray(rng.normal(size=(3, 5)) * 0.3, jnp.float32)
  attention = att.attention_from_linear(linear, 28, 28, n=5)
  images = jnp.asarray(rng.normal(size=(3, 28, 28)), jnp.float32)
  patches = jnp.asarray(rng.normal(size=(3, 5, 5)), jnp.float32)
  # <read(x), w> = gamma^2 <x, write(w)>, per image.
  left = jnp.sum(att.read(images, attention, 5) * patches, axis=(1, 2))
  right = jnp.sum(images * att.write(patches, attention, 28, 28), axis=(1, 2))
  np.testing.assert_allclose(left, attention.gamma ** 2 * right, rtol=1e-4)
  # A filter centred on the image sums to one (less the code's 1e-4); one
  # centred far outside fades to zero.
  centred = att.attention_from_linear(jnp.zeros((1, 5)), 28, 28, n=5)
  f_y, _ = att.filterbanks(centred, 5, 28, 28)
  np.testing.assert_allclose(jnp.sum(f_y, -1), 1.0, atol=1e-3)
  outside = att.attention_from_linear(jnp.asarray([[4.0, 0.0, 0.0, 0.0, 0.0]]), 28, 28, n=5)
  assert float(jnp.max(att.filterbanks(outside, 5, 28, 28)[0])) < 1e-6
