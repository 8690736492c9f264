"""The convolutional VAE of section 5.2: MNIST (Bernoulli) and CIFAR-10
(discretized logistic), trained on the one-sample ELBO.

Data (`load_data`): MNIST from the official IDX files (`data.source=
'mnist'`, `data.folder`) or tfds (`'mnist_tfds'`); the training images stay
uint8 and are binarized afresh in every step (dynamic binarization, the
'binarize' stream of the step's key), the test images are binarized once
(`mnist.fixed_binarization` with `data.test_binarization_seed`, the same
for every run). CIFAR-10 from the original files (`'cifar10_python'` /
`'cifar10_binary'`), intensities k/255 scored by a discretized logistic.

Model: `wn_jax.models.VAE`; its `init` is the data-dependent init of the
whole VAE in one pass, the init batch's latent drawn from the
just-initialised posterior with the init key's 'sample' stream.

Objective (`train_loss`): the batch mean of -ELBO in nats per image (with
the free-bits KL when `objective.free_bits > 0`), KL in closed form or
sampled (`objective.kl`; always sampled with the IAF posterior). Metrics: the true ELBO (never with free bits),
its reconstruction term -log p(x|z), the KL, and bits per dimension
(-ELBO / (D ln 2), D = pixels x channels). Evaluation: the same on the
test set, one posterior sample per image from a key fixed per run.
`final_metrics`: the importance-weighted bound with `eval.iwae_samples`
samples (`test_iwae_k<K>_n<images>`). `pictures`: test images over their reconstructions, and samples
from the prior (the decoder's means).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from wn_jax.data import mnist
from wn_jax.data.cifar10 import CIFAR10_SOURCES, load_cifar10
from wn_jax.models.vae import POSTERIORS, VAE, VAEOutput
from wn_jax.parameterizations import NORMAL_TWINS, normal_from_weight_norm, with_normal_weights
from wn_jax.tasks import elbo
from wn_jax.tasks.base import TaskData, image_grid

Array = jax.Array

# A constant learning rate: a run may go on to more epochs (wn_jax.tasks).
TRAINING_INDEPENDENT_OF_NUM_EPOCHS = True
RNG_NAMES = ("sample", "binarize")
INIT_RNG_NAMES = ("sample", "binarize")
TRAIN_METRICS = ("loss", "elbo", "recon", "kl", "bits_per_dim")
EVAL_METRICS = ("elbo", "recon", "kl", "bits_per_dim")

MNIST_SOURCES = ("mnist", "mnist_tfds")
SOURCES = MNIST_SOURCES + CIFAR10_SOURCES
LIKELIHOODS = {"bernoulli": MNIST_SOURCES, "logistic": CIFAR10_SOURCES}
KL_ESTIMATES = ("analytic", "sample")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key, for the VAE's keys."""
  if config.data.source not in SOURCES:
    raise ValueError(f"config.data.source must be one of {SOURCES} for the VAE, got "
                     f"{config.data.source!r}.")
  if config.data.source != "mnist_tfds" and not config.data.folder:
    raise ValueError(f"config.data.source={config.data.source!r} needs config.data.folder "
                     "(the folder of the MNIST IDX files, or the CIFAR-10 archive).")
  likelihood = config.model.likelihood
  if likelihood not in LIKELIHOODS:
    raise ValueError(f"config.model.likelihood must be one of {tuple(LIKELIHOODS)}, got "
                     f"{likelihood!r}.")
  if config.data.source not in LIKELIHOODS[likelihood]:
    raise ValueError(f"config.model.likelihood={likelihood!r} scores "
                     f"{LIKELIHOODS[likelihood]} data, not {config.data.source!r}.")
  if config.model.posterior not in POSTERIORS:
    raise ValueError(f"config.model.posterior must be one of {POSTERIORS}, got "
                     f"{config.model.posterior!r}.")
  if config.model.posterior == "iaf" and (config.objective.kl != "sample"
                                          or config.objective.free_bits > 0):
    raise ValueError("config.model.posterior='iaf' has no closed-form KL and no per-dimension "
                     "KL: it needs config.objective.kl='sample' and objective.free_bits=0.")
  if config.model.posterior == "iaf" and min(config.model.iaf_steps,
                                             config.model.iaf_hidden) <= 0:
    raise ValueError("config.model.iaf_steps and iaf_hidden must be positive.")
  if config.objective.kl not in KL_ESTIMATES:
    raise ValueError(f"config.objective.kl must be one of {KL_ESTIMATES}, got "
                     f"{config.objective.kl!r}.")
  if config.objective.free_bits < 0:
    raise ValueError("config.objective.free_bits must be >= 0 (0 = the plain ELBO).")
  for key in ("latent", "hidden", "blocks_per_stage"):
    if not config.model[key] > 0:
      raise ValueError(f"config.model.{key} must be positive, got {config.model[key]!r}.")
  if len(config.model.widths) != 3 or min(config.model.widths) <= 0:
    raise ValueError(f"config.model.widths must be 3 positive widths, got "
                     f"{config.model.widths!r}.")
  if config.eval.iwae_samples < 0 or config.eval.iwae_examples < 0:
    raise ValueError("config.eval.iwae_samples and iwae_examples must be >= 0 (0 = off / "
                     "the whole test set).")


def load_data(config: ml_collections.ConfigDict) -> TaskData:
  """train {'images': uint8 [N, H, W, C]}; test {'images': uint8 [M, H, W, C]},
  binarized once (0/1) for the Bernoulli likelihood; info {'image_shape'}."""
  source = config.data.source
  if source in MNIST_SOURCES:
    data = (mnist.load_mnist(config.data.folder) if source == "mnist"
            else mnist.load_mnist_tfds(config.data.tfds_data_dir or None))
    train = data.train_images[..., None]
    test = mnist.fixed_binarization(data.test_images, config.data.test_binarization_seed)
    test = test[..., None]
    logging.info("MNIST: %d training images (binarized dynamically), %d test images "
                 "(binarized once, seed %d).", len(train), len(test),
                 config.data.test_binarization_seed)
  else:
    train = load_cifar10(config.data.folder, "train", source=source)[0]
    test = load_cifar10(config.data.folder, "test", source=source)[0]
    logging.info("CIFAR-10: %d training and %d test images.", len(train), len(test))
  if config.data.train_subset:
    train = train[:config.data.train_subset]
  return TaskData(train={"images": train}, test={"images": test},
                  info={"image_shape": tuple(int(d) for d in train.shape[1:])})


def create_model(config: ml_collections.ConfigDict, info: dict[str, Any]) -> VAE:
  m = config.model
  conv_weight_grad = m.conv_weight_grad
  if conv_weight_grad == "auto":  # per-tap matmuls only pay off on XLA:CPU.
    conv_weight_grad = "per_tap" if jax.default_backend() == "cpu" else "xla"
  return VAE(image_shape=info["image_shape"], out_channels=info["image_shape"][-1],
             widths=tuple(m.widths), blocks_per_stage=m.blocks_per_stage, hidden=m.hidden,
             latent=m.latent, parameterization=m.parameterization, data_init=m.data_init,
             init_scale=m.init_scale, head_init_scale=m.head_init_scale,
             init_order=m.init_order, bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
             conv_weight_grad=conv_weight_grad,
             output_log_scale=m.likelihood == "logistic",
             init_log_scale=m.logistic_init_log_scale, posterior=m.posterior,
             iaf_steps=m.iaf_steps, iaf_hidden=m.iaf_hidden, iaf_context=m.iaf_context,
             iaf_gate_bias=m.iaf_gate_bias)


def adamax_without_bias_correction(learning_rate: float | optax.Schedule, b1: float,
                                   b2: float, eps: float) -> optax.GradientTransformation:
  """The authors' Adamax (`graphy/misc/optim.py`): m = b1 m + (1 - b1) grad,
  u = max(b2 u, |grad| + eps), update = -lr m / u, with no bias correction
  of m (optax.adamax corrects it, which differs in the first ~1/(1-b1)
  steps)."""
  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda u, g: jnp.maximum(b2 * u, jnp.abs(g) + eps), state.nu, updates)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    updates = jax.tree.map(lambda m, u: -lr * m / u, mu, nu)
    return updates, optax.ScaleByAdamState(count=state.count + 1, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     learning_rate: float | Array | None = None
                     ) -> optax.GradientTransformation:
  """Adamax at a constant learning rate (paper: alpha 0.002; the authors'
  code: betas 0.9 / 0.999, eps 1e-8, no bias correction)."""
  del steps_per_epoch
  opt = config.optimizer
  return optax.inject_hyperparams(adamax_without_bias_correction)(
      learning_rate=opt.learning_rate if learning_rate is None else learning_rate,
      b1=opt.b1, b2=opt.b2, eps=opt.eps)


def observed(config: ml_collections.ConfigDict, images: Array, key: Array | None) -> Array:
  """The observed x, float32 [B, H, W, C]: a fresh Bernoulli draw of the
  uint8 pixels / 255 (`key` given: training) or the stored 0/1 test pixels
  (Bernoulli); intensities k/255 (logistic)."""
  if config.model.likelihood == "bernoulli" and key is not None:
    return mnist.binarize(key, mnist.pixel_probabilities(images))
  if config.model.likelihood == "bernoulli":
    return images.astype(jnp.float32)
  return images.astype(jnp.float32) / 255.0


def log_likelihood(config: ml_collections.ConfigDict, variables, output: Array,
                   x: Array) -> Array:
  """log p(x | z) per image [B] from the decoder's output [B, H, W, C]."""
  if config.model.likelihood == "bernoulli":
    return elbo.bernoulli_log_likelihood(output, x)
  mean = 0.5 + output  # the decoder predicts the intensity around mid-grey
  return elbo.discretized_logistic_log_likelihood(
      mean, variables["params"]["output_log_scale"], x)


def _bound_terms(config, variables, out: VAEOutput, x: Array) -> tuple[Array, Array]:
  """Per-image recon = -log p(x|z) [B] and the KL [B, D] per latent dimension
  (diagonal posterior) or [B, 1] (IAF: log q(z|x) - log p(z) of the sample)."""
  recon = -log_likelihood(config, variables, out.output, x)
  if config.model.posterior == "iaf":
    log_prior = elbo.gaussian_log_density(out.z, jnp.zeros_like(out.z), jnp.zeros_like(out.z))
    kl = (out.log_q - log_prior)[:, None]
  elif config.objective.kl == "analytic":
    kl = elbo.gaussian_kl(out.mean, out.log_std)
  else:
    kl = elbo.sampled_kl(out.z, out.mean, out.log_std)
  return recon, kl


def _metrics(recon: Array, kl: Array, weights: Array, dims: int) -> dict[str, Array]:
  """Sums over images with `weights` [B] of elbo, recon, kl, bits_per_dim
  (dims: the number of observed values per image)."""
  kl = jnp.sum(kl, axis=-1)
  bound = -(recon + kl)
  return {"elbo": jnp.sum(bound * weights), "recon": jnp.sum(recon * weights),
          "kl": jnp.sum(kl * weights),
          "bits_per_dim": jnp.sum(-bound * weights) / (dims * math.log(2))}


def init_variables(config: ml_collections.ConfigDict, model: VAE, batch: dict[str, Array],
                   rngs: dict[str, Array]):
  """The data-dependent init of the whole VAE on one (binarized) batch.

  `normal` and `mobn` run the init of their weight-normalized twin (`wn`,
  `wn_mobn`) with the same keys and take its v and g as kernel and frozen
  scale (`normal_from_weight_norm`): they start from exactly the twin's
  function, as the paper's section 3 prescribes for its baseline, in the
  reading `config.model.normal_weights` ('scaled': the scale frozen;
  'direct': folded into the trained kernels; `with_normal_weights`).
  """
  x = observed(config, batch["images"], rngs["binarize"])
  model_rngs = {k: v for k, v in rngs.items() if k != "binarize"}
  weight_norm_twin = {normal: wn for wn, normal in NORMAL_TWINS.items()}
  if model.parameterization in weight_norm_twin and model.data_init:
    twin = model.clone(parameterization=weight_norm_twin[model.parameterization])
    return with_normal_weights(normal_from_weight_norm(twin.init(model_rngs, x - 0.5,
                                                                 train=True)),
                               config.model.get("normal_weights", "scaled"))
  return model.init(model_rngs, x - 0.5, train=True)


def train_loss(config: ml_collections.ConfigDict, model: VAE, params, model_state,
               batch: dict[str, Array], rngs: dict[str, Array]):
  """Batch mean of -ELBO (nats per image; the free-bits KL when
  `objective.free_bits > 0`): (loss, ({loss, elbo, recon, kl,
  bits_per_dim}, updates)); the metrics are batch means of the true bound."""
  variables = {"params": params, **model_state}
  x = observed(config, batch["images"], rngs["binarize"])
  out, updates = model.apply(variables, x - 0.5, train=True, rngs={"sample": rngs["sample"]},
                             mutable=["batch_stats"])
  recon, kl = _bound_terms(config, variables, out, x)
  loss = jnp.mean(recon) + elbo.free_bits_kl(kl, config.objective.free_bits)
  weights = jnp.full(recon.shape, 1.0 / recon.shape[0])
  dims = math.prod(x.shape[1:])
  return loss, ({"loss": loss, **_metrics(recon, kl, weights, dims)}, updates)


def eval_sums(config: ml_collections.ConfigDict, model: VAE, variables,
              batch: dict[str, Array], mask: Array, key: Array) -> dict[str, Array]:
  """Sums over the unmasked test images of the one-sample bound's terms
  (deterministic mode: running batch statistics), and 'count'."""
  x = observed(config, batch["images"], None)
  out = model.apply(variables, x - 0.5, train=False, rngs={"sample": key})
  recon, kl = _bound_terms(config, variables, out, x)
  return {**_metrics(recon, kl, mask, math.prod(x.shape[1:])), "count": jnp.sum(mask)}


def _iwae_batch(variables, images: Array, key: Array, *, config, model: VAE,
                num_samples: int) -> tuple[Array, Array]:
  """L_K and the mean of the K one-sample bounds (sampled KL) per image [B]."""
  x = observed(config, images, None)
  mean, log_std, context = model.apply(variables, x - 0.5, train=False, method=VAE.encode)

  def one_sample(sample_key):
    eps = jax.random.normal(sample_key, mean.shape)
    z, log_q = model.apply(variables, mean, log_std, context, eps, train=False,
                           method=VAE.sample_posterior)
    output = model.apply(variables, z, train=False, method=VAE.decode)
    log_prior = elbo.gaussian_log_density(z, jnp.zeros_like(z), jnp.zeros_like(z))
    return log_likelihood(config, variables, output, x) + log_prior - log_q

  log_weights = jax.lax.map(one_sample, jax.random.split(key, num_samples))  # [K, B]
  return elbo.importance_weighted_bound(log_weights), jnp.mean(log_weights, axis=0)


def final_metrics(config: ml_collections.ConfigDict, model: VAE, variables,
                  test: dict[str, Array], key: Array) -> dict[str, float]:
  """The importance-weighted bound L_K (K = `eval.iwae_samples`) on the first
  `eval.iwae_examples` test images (0 = all), in nats per image, with the
  mean of the same K one-sample bounds beside it (L_K >= that mean for
  every image)."""
  samples = config.eval.iwae_samples
  if samples == 0:
    return {}
  images = test["images"]
  count = config.eval.iwae_examples or images.shape[0]
  batch = config.eval.iwae_batch_size
  iwae_batch = jax.jit(functools.partial(_iwae_batch, config=config, model=model,
                                         num_samples=samples))
  totals = np.zeros(2)
  for start in range(0, count, batch):
    rows = images[start:min(start + batch, count)]
    bound, single = iwae_batch(variables, rows, jax.random.fold_in(key, start))
    totals += [float(jnp.sum(bound)), float(jnp.sum(single))]
  return {f"test_iwae_k{samples}_n{count}": totals[0] / count,
          f"test_elbo_sampled_kl_n{count}": totals[1] / count}


def pictures(config: ml_collections.ConfigDict, model: VAE, variables,
             test: dict[str, Array], key: Array) -> dict[str, np.ndarray]:
  """'reconstructions': 8 test images (top row) over their reconstructions
  (decoder means, one posterior sample); 'samples': 8 x 8 decoder means of
  z ~ N(0, I)."""
  sample_key, prior_key = jax.random.split(key)
  x = observed(config, test["images"][:8], None)
  decode_means = jax.jit(functools.partial(_decoder_means, config=config, model=model))
  reconstructions = decode_means(variables, x, sample_key)
  samples = decode_means(variables, None, prior_key)
  return {"reconstructions": image_grid(np.concatenate([np.asarray(x),
                                                        np.asarray(reconstructions)]), 8),
          "samples": image_grid(np.asarray(samples), 8)}


def _decoder_means(variables, x: Array | None, key: Array, *, config, model: VAE) -> Array:
  """The decoder's means [N, H, W, C] in [0, 1]: of one posterior sample per
  image of x [N, H, W, C], or (x None) of 64 draws z ~ N(0, I)."""
  if x is None:
    output = model.apply(variables, jax.random.normal(key, (64, model.latent)), train=False,
                         method=VAE.decode)
  else:
    output = model.apply(variables, x - 0.5, train=False, rngs={"sample": key}).output
  if config.model.likelihood == "bernoulli":
    return jax.nn.sigmoid(output)
  return jnp.clip(0.5 + output, 0.0, 1.0)
