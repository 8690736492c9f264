"""What every task shares: the `TaskData` format and picture helpers."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class TaskData(NamedTuple):
  """A task's data set in host memory, as the loop places it on the devices.

  train: name -> array [num_train, ...]; a training batch is every array
    gathered at the batch's rows.
  test: name -> array [num_test, ...]; likewise for evaluation.
  info: what the model and the records need from the data (for example
    `num_classes`, `image_shape`); hashable values only.
  steps_per_epoch: only for a task without a training set (one that makes
    its own experience, as the DQN does: train={}): the updates of one
    epoch. Its steps get an empty batch. With a training set the loop
    takes num_train // batch_size.
  """
  train: dict[str, np.ndarray]
  test: dict[str, np.ndarray]
  info: dict[str, Any]
  steps_per_epoch: int | None = None


def num_examples(arrays: dict[str, Any]) -> int:
  """The common leading size of a dict of arrays; ValueError if they differ."""
  sizes = {name: a.shape[0] for name, a in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"Arrays of one split differ in their number of examples: {sizes}.")
  return next(iter(sizes.values()))


def image_grid(images: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
  """Tiles images [N, H, W, C] (floats in [0, 1]) into one uint8 image.

  Rows of `columns` images, separated by `pad` white pixels:
  [rows * (H + pad) + pad, columns * (W + pad) + pad, C].
  """
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  rows = -(-n // columns)
  grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top:top + h, left:left + w] = image
  return np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)
