"""DRAW on binarized MNIST (section 5.3, Figure 4), trained on the one-sample
negative ELBO of the reference code (jbornschein/draw).

Data (`load_data`): the original MNIST IDX files (`data.source='mnist'`)
or tfds ('mnist_tfds'). The reference code trains on the statically
binarized MNIST of Larochelle (50,000 / 10,000 / 10,000), which our data
does not hold; the recipe's fallback is used instead and named
`data.binarization='fixed'`: the first `data.train_examples` (50,000)
training images and the 10,000 test images, each binarized ONCE by
`mnist.fixed_binarization` with its own seed (`data.train_binarization_seed`,
`data.test_binarization_seed`). The same Bernoulli draw of grey levels, but
not the same draw: a different benchmark file, so compare numbers with
Figure 4 only loosely. No shuffling (`shuffle_train=False`): every epoch
visits the same 500 batches in file order, as the reference code.

Objective (`train_loss`), per image, in nats:
    -ELBO = -log p(x | c_T) + sum_t KL(q(z_t | x, z_<t) || N(0, I))
with p(x | c_T) Bernoulli of logits c_T (the cross-entropy from logits)
and each KL in closed form (`elbo.gaussian_kl`), summed over the latent
dimensions and the T glimpses; one posterior sample per glimpse per image
from the step's 'sample' stream. Metrics: elbo (the bound, nats per image;
Figure 4's y-axis), recon, kl. Evaluation: the same on the test set, one
sample per image from a key fixed per run.

Optimizer: the global gradient norm clipped to `optimizer.clip_norm`, then
Adam (blocks' `CompositeRule([StepClipping(10), Adam(3e-4)])`).

`normal` starts from the function of `wn` at g = ||v||: the same weight
draw (`init_variables`). `pictures`: the canvas sigmoid(c_t) over the
glimpses, for 8 test digits and 8 samples of the generative model, as grids
and as animations (GIF in `pictures/`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from wn_jax.data import mnist
from wn_jax.models.draw import DRAW, DRAWOutput
from wn_jax.parameterizations import plain_from_weight_norm
from wn_jax.tasks import elbo
from wn_jax.tasks.base import TaskData, image_grid

Array = jax.Array

# A constant learning rate: a run may go on to more epochs (wn_jax.tasks).
TRAINING_INDEPENDENT_OF_NUM_EPOCHS = True
RNG_NAMES = ("sample",)
INIT_RNG_NAMES = ()
TRAIN_METRICS = ("loss", "elbo", "recon", "kl")
EVAL_METRICS = ("elbo", "recon", "kl")

SOURCES = ("mnist", "mnist_tfds")
BINARIZATIONS = ("fixed",)
PICTURE_DIGITS = 8
PICTURE_FRAMES = 8  # glimpses shown in the grids (evenly spaced, the last one included)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key, for DRAW's keys."""
  if config.data.source not in SOURCES:
    raise ValueError(f"config.data.source must be one of {SOURCES} for DRAW, got "
                     f"{config.data.source!r}.")
  if config.data.source == "mnist" and not config.data.folder:
    raise ValueError("config.data.source='mnist' needs config.data.folder (the folder of "
                     "the MNIST IDX files).")
  if config.data.binarization not in BINARIZATIONS:
    raise ValueError(f"config.data.binarization must be one of {BINARIZATIONS}, got "
                     f"{config.data.binarization!r}.")
  if not 0 < config.data.train_examples <= 60000:
    raise ValueError(f"config.data.train_examples must lie in 1..60000, got "
                     f"{config.data.train_examples!r}.")
  if config.model.parameterization not in ("normal", "wn"):
    raise ValueError(f"DRAW's config.model.parameterization must be 'normal' or 'wn' (batch "
                     f"norm does not apply to its recurrence), got "
                     f"{config.model.parameterization!r}.")
  if config.model.data_init:
    raise ValueError("config.model.data_init must be False for DRAW: the paper keeps the "
                     "recurrent model's initialization (sections 3 and 5.3).")
  for key in ("glimpses", "encoder_units", "decoder_units", "latent"):
    if not config.model[key] > 0:
      raise ValueError(f"config.model.{key} must be positive, got {config.model[key]!r}.")
  if not config.optimizer.clip_norm > 0:
    raise ValueError(f"config.optimizer.clip_norm must be positive, got "
                     f"{config.optimizer.clip_norm!r}.")


def load_data(config: ml_collections.ConfigDict) -> TaskData:
  """train / test {'images': uint8 0/1 [N, 28, 28]}, each binarized once;
  info {'image_shape': (28, 28)}."""
  data = (mnist.load_mnist(config.data.folder) if config.data.source == "mnist"
          else mnist.load_mnist_tfds(config.data.tfds_data_dir or None))
  count = config.data.train_examples
  if count > len(data.train_images):
    raise ValueError(f"config.data.train_examples={count} exceeds the "
                     f"{len(data.train_images)} training images.")
  train = mnist.fixed_binarization(data.train_images[:count],
                                   config.data.train_binarization_seed)
  test = mnist.fixed_binarization(data.test_images, config.data.test_binarization_seed)
  logging.info("Binarized MNIST (fixed, seeds %d / %d): %d training and %d test images.",
               config.data.train_binarization_seed, config.data.test_binarization_seed,
               len(train), len(test))
  return TaskData(train={"images": train}, test={"images": test},
                  info={"image_shape": tuple(int(d) for d in train.shape[1:])})


def create_model(config: ml_collections.ConfigDict, info: dict[str, Any]) -> DRAW:
  m = config.model
  return DRAW(image_shape=info["image_shape"], glimpses=m.glimpses,
              encoder_units=m.encoder_units, decoder_units=m.decoder_units, latent=m.latent,
              read_n=m.read_n, write_n=m.write_n, parameterization=m.parameterization,
              normalization=m.normalization, g_start=m.g_start, peepholes=m.peepholes)


def clipped_adam(learning_rate: float | Array, b1: float, b2: float, eps: float,
                 clip_norm: float) -> optax.GradientTransformation:
  """Clip the global gradient L2 norm over all parameters to `clip_norm`,
  then Adam (the reference code's Blocks `StepClipping` + `Adam`)."""
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     learning_rate: float | Array | None = None
                     ) -> optax.GradientTransformation:
  """Clipped Adam at a constant learning rate (no schedule, no decay)."""
  del steps_per_epoch
  opt = config.optimizer
  return optax.inject_hyperparams(clipped_adam)(
      learning_rate=opt.learning_rate if learning_rate is None else learning_rate,
      b1=opt.b1, b2=opt.b2, eps=opt.eps, clip_norm=opt.clip_norm)


def _noise(model: DRAW, key: Array, batch: int) -> Array:
  """eps [T, B, latent] ~ N(0, I): one posterior sample per glimpse and image."""
  return jax.random.normal(key, (model.glimpses, batch, model.latent), jnp.float32)


def init_variables(config: ml_collections.ConfigDict, model: DRAW, batch: dict[str, Array],
                   rngs: dict[str, Array]):
  """N(0, 0.01^2) weights, zero biases (no data-dependent init). 'wn'
  draws v and sets g = ||v|| ('norm') or 1 ('one'); 'normal' draws the
  same v as the 'wn' model of the same key and takes w = g v/||v|| = v as
  its kernels (`plain_from_weight_norm`), so both arms start from one draw."""
  del config
  x = batch["images"].astype(jnp.float32)
  eps = jnp.zeros((model.glimpses, x.shape[0], model.latent), jnp.float32)
  if model.parameterization == "wn":
    return model.init(rngs, x, eps)
  twin = model.clone(parameterization="wn", g_start="norm")
  return {"params": plain_from_weight_norm(twin.init(rngs, x, eps)["params"])[0]}


def bound_terms(images: Array, out: DRAWOutput) -> tuple[Array, Array]:
  """recon = -log p(x | c_T) [B] (Bernoulli, from logits) and the KL summed
  over glimpses and latent dimensions [B]."""
  recon = -elbo.bernoulli_log_likelihood(out.canvas, images.astype(jnp.float32))
  kl = jnp.sum(elbo.gaussian_kl(out.mean, out.log_std), axis=(0, 2))
  return recon, kl


def _sums(recon: Array, kl: Array, weights: Array) -> dict[str, Array]:
  return {"elbo": -jnp.sum((recon + kl) * weights), "recon": jnp.sum(recon * weights),
          "kl": jnp.sum(kl * weights)}


def train_loss(config: ml_collections.ConfigDict, model: DRAW, params, model_state,
               batch: dict[str, Array], rngs: dict[str, Array]):
  """Batch mean of -ELBO in nats per image: (loss, ({loss, elbo, recon, kl}, {}))."""
  del config
  images = batch["images"]
  out = model.apply({"params": params, **model_state}, images,
                    _noise(model, rngs["sample"], images.shape[0]))
  recon, kl = bound_terms(images, out)
  loss = jnp.mean(recon + kl)
  metrics = _sums(recon, kl, jnp.full(recon.shape, 1.0 / recon.shape[0]))
  return loss, ({"loss": loss, **metrics}, {})


def eval_sums(config: ml_collections.ConfigDict, model: DRAW, variables,
              batch: dict[str, Array], mask: Array, key: Array) -> dict[str, Array]:
  """Sums over the unmasked test images of elbo, recon, kl, and 'count'."""
  del config
  images = batch["images"]
  out = model.apply(variables, images, _noise(model, key, images.shape[0]))
  recon, kl = bound_terms(images, out)
  return {**_sums(recon, kl, mask), "count": jnp.sum(mask)}


def _canvases(variables, images: Array | None, key: Array, *, model: DRAW) -> Array:
  """sigmoid(c_t) [T, N, H, W] of test images (one posterior sample), or of
  N = PICTURE_DIGITS samples of the generative model (images None)."""
  model = model.clone(keep_canvases=True)
  if images is None:
    out = model.apply(variables, _noise(model, key, PICTURE_DIGITS), method=DRAW.generate)
  else:
    out = model.apply(variables, images, _noise(model, key, images.shape[0]))
  return jax.nn.sigmoid(out.canvases)


def pictures(config: ml_collections.ConfigDict, model: DRAW, variables,
             test: dict[str, Array], key: Array) -> dict[str, np.ndarray]:
  """'glimpses_test' / 'glimpses_samples': a grid, one row per digit, of
  the canvas at PICTURE_FRAMES evenly spaced glimpses (the last is c_T; the
  test rows end with the image itself); 'animation_test' /
  'animation_samples': every glimpse's canvas of the 8 digits side by side,
  [T, H', W', 1] frames (an animated GIF in `pictures/`)."""
  del config
  test_key, sample_key = jax.random.split(key)
  images = jnp.asarray(test["images"][:PICTURE_DIGITS], jnp.float32)
  canvases = jax.jit(functools.partial(_canvases, model=model), static_argnums=())
  steps = model.glimpses
  shown = np.unique(np.linspace(0, steps - 1, min(PICTURE_FRAMES, steps)).round().astype(int))
  out = {}
  for name, frames, originals in (
      ("test", canvases(variables, images, test_key), np.asarray(images)),
      ("samples", canvases(variables, None, sample_key), None)):
    frames = np.asarray(frames)  # [T, N, H, W]
    grid = frames[shown].transpose(1, 0, 2, 3)  # [N, shown, H, W]
    if originals is not None:
      grid = np.concatenate([grid, originals[:, None]], axis=1)
    columns = grid.shape[1]
    out[f"glimpses_{name}"] = image_grid(grid.reshape(-1, *grid.shape[2:])[..., None],
                                         columns)
    out[f"animation_{name}"] = np.stack([image_grid(frame[..., None], PICTURE_DIGITS)
                                         for frame in frames])
  return out
