"""Batching and augmentation: epoch orders, batch indices, subsets, `augment`.

Pure functions of (seed, epoch, sizes) and of arrays, so a resumed run
draws the same batches as an uninterrupted one. Nothing here reads files
or knows the source of the data (`sources`, `cache`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("flip", "max_translation"))
def augment(key: jax.Array, images: jax.Array, flip: bool, max_translation: int) -> jax.Array:
  """Random horizontal flips and translations, drawn per image from `key`.

  Jitted with `flip` and `max_translation` static (they come from the
  config); it can also be called inside a jitted train step.

  Args:
    key: PRNG key; the same key gives the same output.
    images: [batch, height, width, channels], any dtype.
    flip: mirror each image left-right with probability 1/2.
    max_translation: shift each image by an integer offset drawn uniformly
      from [-max_translation, max_translation] in each of height and width,
      filling the uncovered border with zeros (which is the data mean after
      whitening). 0 disables it.

  Returns:
    [batch, height, width, channels], same dtype. With flip=False and
    max_translation=0 the input is returned unchanged.
  """
  if max_translation < 0:
    raise ValueError(f"max_translation must be >= 0, got {max_translation}.")
  batch, height, width, channels = images.shape
  flip_key, shift_key = jax.random.split(key)
  if flip:
    mirror = jax.random.bernoulli(flip_key, 0.5, (batch,))
    images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1, :], images)
  if max_translation > 0:
    pad = max_translation
    shifts = jax.random.randint(shift_key, (batch, 2), -pad, pad + 1)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop(image, shift):
      start = (pad + shift[0], pad + shift[1], 0)
      return jax.lax.dynamic_slice(image, start, (height, width, channels))

    images = jax.vmap(crop)(padded, shifts)
  return images


def class_balanced_subset(labels: np.ndarray, size: int) -> np.ndarray:
  """Indices of the first `size / num_classes` examples of every class.

  Taken in file order, so the same images are chosen from any copy of a
  data set that keeps each class's order (the original CIFAR-10 files and
  the JPEG copy do; see docs/REPRODUCTION.md).

  Args:
    labels: int [num_examples], values in [0, num_classes).
    size: examples to keep, a multiple of the number of classes.

  Returns:
    int64 [size], increasing.

  Raises:
    ValueError: `size` is not a positive multiple of the number of classes,
      or a class has fewer than `size / num_classes` examples.
  """
  classes, counts = np.unique(labels, return_counts=True)
  if size <= 0 or size % len(classes):
    raise ValueError(
      f"A class-balanced subset needs a positive multiple of the {len(classes)} "
      f"classes, got {size}.")
  per_class = size // len(classes)
  if counts.min() < per_class:
    raise ValueError(
      f"A subset of {size} needs {per_class} examples of each class, but class "
      f"{classes[counts.argmin()]} has only {counts.min()}.")
  chosen = [np.flatnonzero(labels == c)[:per_class] for c in classes]
  return np.sort(np.concatenate(chosen))


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the training set.

  A fresh permutation every epoch (as in the authors' code), reproducible
  from (seed, epoch) alone, so a resumed run sees the same order.

  Returns:
    int64 [num_examples], a permutation of range(num_examples).
  """
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool) -> int:
  """Batches per pass: floor if `drop_remainder` (training), else ceil (eval)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def batch_indices(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """Training-set indices for every batch of one epoch.

  The epoch's permutation cut into full batches; the last incomplete batch
  is dropped (CIFAR-10: 50,000 / 100 = 500 batches, nothing dropped).

  Returns:
    int64 [num_batches, batch_size]; row i indexes batch i.
  """
  steps = num_batches(num_examples, batch_size, drop_remainder=True)
  order = epoch_permutation(seed, epoch, num_examples)
  return order[: steps * batch_size].reshape(steps, batch_size)
