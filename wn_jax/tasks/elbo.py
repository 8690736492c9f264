"""The variational bound's pieces: likelihoods, Gaussian KL, free bits, IWAE.

Pure functions of arrays, shared by the latent-variable tasks (the VAE of
section 5.2; DRAW's per-step KL is the same `gaussian_kl`). All values are
in nats; each function's docstring states its shapes.

The one-sample evidence lower bound of an image x (Kingma & Welling 2014):

    ELBO(x) = log p(x | z) - KL(q(z | x) || p(z)),    z ~ q(z | x),

with KL either in closed form (`gaussian_kl`, the diagonal Gaussian
posterior against N(0, I)) or as the one-sample estimate
`log q(z | x) - log p(z)` (the authors' code); both have the same
expectation. The importance-weighted bound (Burda et al. 2016) with K
posterior samples,

    L_K(x) = log (1/K) sum_k exp(log p(x | z_k) + log p(z_k) - log q(z_k | x)),

satisfies L_1 = the one-sample ELBO (with the sampled KL), E[L_K] <=
E[L_{K+1}] <= log p(x), and L_K -> log p(x) as K grows.

distrax would give the Gaussian and Bernoulli log densities, but it pulls
in TensorFlow Probability, whose releases pin narrow JAX ranges; the few
closed forms here are all the tasks need.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

LOG_2PI = math.log(2 * math.pi)


def bernoulli_log_likelihood(logits: Array, x: Array) -> Array:
  """log p(x | logits) summed over all but the batch axis: [B, ...] -> [B].

  x holds 0/1 values; p(x_i = 1) = sigmoid(logits_i).
  """
  log_p = x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits)
  return jnp.sum(log_p.reshape(log_p.shape[0], -1), axis=-1)


def discretized_logistic_log_likelihood(mean: Array, log_scale: Array, x: Array,
                                        num_bins: int = 256) -> Array:
  """log P(x) of intensities x in {0, 1/(n-1), ..., 1} (n = num_bins) under
  a logistic of `mean` and `log_scale` discretized into n bins of width
  1/(n-1) centred on the values, the outer bins extending to -inf and +inf
  (so the n probabilities sum to 1 and the result is a discrete
  log-probability). Summed over all but the batch axis: [B, ...] -> [B].

  mean [B, ...]; log_scale broadcasts against it (for example one value
  per channel, [C]); x [B, ...].
  """
  half_bin = 0.5 / (num_bins - 1)
  inv_scale = jnp.exp(-log_scale)
  upper = (x + half_bin - mean) * inv_scale
  lower = (x - half_bin - mean) * inv_scale
  # log(sigmoid(upper) - sigmoid(lower)), stably: sigmoid(u) - sigmoid(l) =
  # sigmoid(u) * sigmoid(-l) * (1 - exp(l - u)).
  log_mid = (jax.nn.log_sigmoid(upper) + jax.nn.log_sigmoid(-lower)
             + jnp.log(-jnp.expm1(lower - upper)))
  log_p = jnp.where(x <= half_bin, jax.nn.log_sigmoid(upper),          # lowest bin
                    jnp.where(x >= 1 - half_bin, jax.nn.log_sigmoid(-lower),  # highest bin
                              log_mid))
  return jnp.sum(log_p.reshape(log_p.shape[0], -1), axis=-1)


def gaussian_log_density(z: Array, mean: Array, log_std: Array) -> Array:
  """log N(z; mean, diag(exp(log_std)^2)) summed over the last axis: [..., D] -> [...]."""
  standardized = (z - mean) * jnp.exp(-log_std)
  return jnp.sum(-0.5 * (jnp.square(standardized) + LOG_2PI) - log_std, axis=-1)


def gaussian_kl(mean: Array, log_std: Array) -> Array:
  """KL(N(mean, diag(exp(log_std)^2)) || N(0, I)) per dimension, closed form:
  0.5 (mean^2 + sigma^2 - 1) - log sigma. [..., D] -> [..., D]."""
  return 0.5 * (jnp.square(mean) + jnp.exp(2 * log_std) - 1.0) - log_std


def sampled_kl(z: Array, mean: Array, log_std: Array) -> Array:
  """The one-sample KL estimate log q(z) - log N(z; 0, I) per dimension:
  [..., D] -> [..., D] (the authors' code)."""
  log_q = -0.5 * (jnp.square((z - mean) * jnp.exp(-log_std)) + LOG_2PI) - log_std
  log_prior = -0.5 * (jnp.square(z) + LOG_2PI)
  return log_q - log_prior


def free_bits_kl(kl_per_dimension: Array, free_bits: float) -> Array:
  """The KL term of the free-bits objective (IAF paper, section C.8; the
  authors' code): each latent dimension's KL averaged over the batch, then
  max(free_bits, .), summed. [B, D] -> scalar. With free_bits = 0 it is the
  batch mean of the summed KL."""
  return jnp.sum(jnp.maximum(jnp.mean(kl_per_dimension, axis=0), free_bits))


def log_mean_exp(x: Array, axis: int = 0) -> Array:
  """log mean exp(x) along `axis`, stably."""
  return jax.nn.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def importance_weighted_bound(log_weights: Array) -> Array:
  """L_K = log (1/K) sum_k exp(w_k) for log-weights [K, B]
  (w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)): -> [B]."""
  return log_mean_exp(log_weights, axis=0)
