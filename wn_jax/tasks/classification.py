"""Image classification, the paper's CIFAR-10 experiment (section 5.1).

Data: CIFAR-style images, ZCA-whitened through the data cache
(`wn_jax.data`); model: `wn_jax.models.CifarNet` (or its NNX twin with
`model.api='nnx'`); objective: softmax cross-entropy, with the 0/1 error
as the second metric; optimizer: Adam with the authors' per-epoch
schedules. The task interface is described in `wn_jax.tasks`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from wn_jax import models
from wn_jax.data import batches, cache, sources
from wn_jax.models.functional import FunctionalCifarNet
from wn_jax.parameterizations import with_normal_weights
from wn_jax.tasks.base import TaskData

Array = jax.Array

RNG_NAMES = ("noise", "dropout", "augment")
INIT_RNG_NAMES = ("noise", "dropout")
TRAIN_METRICS = ("loss", "error")
EVAL_METRICS = ("loss", "error")

CONV_WEIGHT_GRADS = ("auto", "xla", "per_tap")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The module system the network is written in: Flax Linen (wn_jax.models) or
# Flax NNX (wn_jax.nnx), trained by the same functional loop.
MODEL_APIS = ("linen", "nnx")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key, for the classification keys."""
  if config.model.api not in MODEL_APIS:
    raise ValueError(f"config.model.api must be one of {', '.join(MODEL_APIS)}, "
                     f"got {config.model.api!r}.")
  if not config.model.width > 0:
    raise ValueError(f"config.model.width must be positive, got {config.model.width!r}.")
  if not 0 <= config.optimizer.anneal_start_epoch <= config.num_epochs:
    raise ValueError(
        f"config.optimizer.anneal_start_epoch={config.optimizer.anneal_start_epoch}"
        f" must lie in [0, num_epochs={config.num_epochs}]; set it too when "
        "changing num_epochs (the paper anneals over the second half).")
  if config.model.conv_weight_grad not in CONV_WEIGHT_GRADS:
    raise ValueError(f"config.model.conv_weight_grad must be one of "
                     f"{CONV_WEIGHT_GRADS}, got {config.model.conv_weight_grad!r}.")
  if config.model.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype must be one of {tuple(DTYPES)}, got "
                     f"{config.model.dtype!r}.")
  if config.data.source not in sources.VALID_SOURCES:
    raise ValueError(f"config.data.source must be one of "
                     f"{sources.VALID_SOURCES}, got {config.data.source!r}.")
  if config.data.source == "folder" and not config.data.folder:
    raise ValueError("config.data.source='folder' needs config.data.folder="
                     "<root with train/ and test/ class folders>.")
  if config.data.train_subset < 0:
    raise ValueError(f"config.data.train_subset must be >= 0 (0 = the whole training set), "
                     f"got {config.data.train_subset!r}.")
  if config.data.augment_max_translation < 0:
    raise ValueError("config.data.augment_max_translation must be >= 0.")


def load_data(config: ml_collections.ConfigDict) -> TaskData:
  """Loads and whitens the data set (or reads both from the data cache),
  logging the times: train/test {'images': float32 [N, H, W, C] whitened,
  'labels': int32 [N]}, info {'num_classes'}."""
  data = cache.load_whitened(config.data)
  logging.info("Loaded %d training and %d test images from %s in %.1f s (data cache: %s, %s).",
               len(data.train_x), len(data.test_x), config.data.source, data.report.load_seconds,
               data.report.cache, data.report.cache_dir)
  if config.data.train_subset:  # ZCA stays the one fitted on the whole training set.
    rows = batches.class_balanced_subset(data.train_y, config.data.train_subset)
    data = data._replace(train_x=data.train_x[rows], train_y=data.train_y[rows])
    logging.info("Training on a class-balanced subset of %d images (the first %d of each class).",
                 len(rows), len(rows) // len(data.class_names))
  logging.info("ZCA fitted and applied in %.1f s%s.", data.report.whiten_seconds,
               " (whitened arrays read from the data cache)" if data.report.cache == "hit" else "")
  return TaskData(train={"images": data.train_x, "labels": data.train_y},
                  test={"images": data.test_x, "labels": data.test_y},
                  info={"num_classes": len(data.class_names)})


def create_model(config: ml_collections.ConfigDict, info: dict[str, Any]
                 ) -> models.CifarNet | FunctionalCifarNet:
  """The Linen CifarNet, or with `model.api='nnx'` its NNX twin behind the
  same init/apply interface (same variables, same numbers)."""
  conv_weight_grad = config.model.conv_weight_grad
  if conv_weight_grad == "auto":  # per-tap matmuls only pay off on XLA:CPU.
    conv_weight_grad = "per_tap" if jax.default_backend() == "cpu" else "xla"
  m = config.model
  model = models.CifarNet(
      num_classes=info["num_classes"], width=m.width, parameterization=m.parameterization,
      data_init=m.data_init, init_scale=m.init_scale, init_order=m.init_order,
      input_noise=m.input_noise,
      dropout_rate=m.dropout_rate, leaky_relu_slope=m.leaky_relu_slope,
      bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
      conv_weight_grad=conv_weight_grad, dtype=DTYPES[m.dtype])
  return FunctionalCifarNet.like(model) if m.api == "nnx" else model


def learning_rate_and_b1(config: ml_collections.ConfigDict, steps_per_epoch: int,
                         learning_rate: float | Array | None = None
                         ) -> tuple[optax.Schedule, optax.Schedule]:
  """Per-epoch schedules of the authors' code, as functions of the step.

  lr(epoch) = lr * min((num_epochs - epoch) / (num_epochs - anneal_start), 1)
  (code: `lr * min(2 - epoch/100, 1)` for 200 epochs, anneal at 100);
  b1(epoch) = b1 before `anneal_start_epoch`, `b1_anneal` from then on.
  `learning_rate` (default `config.optimizer.learning_rate`) is the base
  `lr`; it may be a traced value, one per sweep member.
  """
  opt = config.optimizer
  base = opt.learning_rate if learning_rate is None else learning_rate
  anneal_epochs = max(config.num_epochs - opt.anneal_start_epoch, 1)

  def epoch_of(step):
    return step // steps_per_epoch

  def schedule(step):
    remaining = (config.num_epochs - epoch_of(step)) / anneal_epochs
    return base * jnp.clip(remaining, 0.0, 1.0)

  def b1(step):
    return jnp.where(epoch_of(step) < opt.anneal_start_epoch, opt.b1, opt.b1_anneal)

  return schedule, b1


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     learning_rate: float | Array | None = None
                     ) -> optax.GradientTransformation:
  """Adam with epsilon inside the square root (code: m/sqrt(v + 1e-8)).

  `learning_rate`: the base learning rate (default the config's), a traced
  value inside a sweep, so each member's schedule reaches optax as data.
  """
  schedule, b1 = learning_rate_and_b1(config, steps_per_epoch, learning_rate)
  return optax.inject_hyperparams(optax.adam)(
      learning_rate=schedule, b1=b1, b2=config.optimizer.b2,
      eps=config.optimizer.eps, eps_root=config.optimizer.eps_root)


def cross_entropy_and_error(logits: Array, labels: Array) -> tuple[Array, Array]:
  """Per-example softmax cross-entropy and 0/1 error: [B, K], [B] -> [B], [B]."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  error = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  return loss, error


def init_variables(config: ml_collections.ConfigDict, model, batch: dict[str, Array],
                   rngs: dict[str, Array]):
  """The data-dependent init in training mode (noise and dropout on), as
  the authors' code runs it; batch {'images': [N, H, W, C], ...}.
  `normal`/`mobn` then take the reading `config.model.normal_weights`
  (`wn_jax.parameterizations.with_normal_weights`)."""
  variables = model.init(rngs, batch["images"], train=True)
  return with_normal_weights(variables, config.model.get("normal_weights", "scaled"))


def train_loss(config: ml_collections.ConfigDict, model, params, model_state,
               batch: dict[str, Array], rngs: dict[str, Array]):
  """Mean cross-entropy of a batch (noise, dropout and the optional
  augmentation on; batch statistics): (loss, ({loss, error}, updates))."""
  rngs = dict(rngs)
  images = batches.augment(rngs.pop("augment"), batch["images"], config.data.augment_flip,
                           config.data.augment_max_translation)
  logits, updates = model.apply({"params": params, **model_state}, images, train=True,
                                rngs=rngs, mutable=["batch_stats"])
  loss, error = cross_entropy_and_error(logits, batch["labels"])
  loss, error = jnp.mean(loss), jnp.mean(error)
  return loss, ({"loss": loss, "error": error}, updates)


def eval_sums(config: ml_collections.ConfigDict, model, variables, batch: dict[str, Array],
              mask: Array, key: Array) -> dict[str, Array]:
  """Summed loss, errors and count over a masked batch (deterministic mode)."""
  del config, key
  logits = model.apply(variables, batch["images"], train=False)
  loss, error = cross_entropy_and_error(logits, batch["labels"])
  return {"loss": jnp.sum(loss * mask), "error": jnp.sum(error * mask),
          "count": jnp.sum(mask)}
