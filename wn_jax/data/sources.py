"""Where the images come from: the `Dataset` format, tfds, and `load_dataset`.

Every source gives the same format, `images: uint8 [N, H, W, 3]`,
`labels: int32 [N]` and the class names:

* `source='folder'`: `<folder>/<split>/<class name>/<image file>`, read with
  Pillow (`folder.load_folder`);
* `source='tfds'`: a TensorFlow Datasets name (`load_tfds`), downloaded and
  prepared by tfds on first use;
* `source='cifar10_python'` / `'cifar10_binary'`: the original CIFAR-10
  files (`cifar10.load_cifar10`).

`load_dataset` reads the train and test splits the config names. Scaling,
whitening and caching happen later (`zca`, `cache`), never here.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from wn_jax.data.cifar10 import CIFAR10_SOURCES, load_cifar10
from wn_jax.data.folder import FOLDER_LAYOUT, load_folder

VALID_SOURCES = ("tfds", "folder") + CIFAR10_SOURCES
# Sources whose files are named by `data_config.folder`.
PATH_SOURCES = ("folder",) + CIFAR10_SOURCES

# Examples per tf.data batch when reading a tfds split into memory; any size
# works, larger means fewer Python round trips.
_TFDS_READ_BATCH = 10_000


class Dataset(NamedTuple):
  """A labelled train/test data set held in memory.

  Attributes:
    train_images: uint8 [num_train, height, width, 3].
    train_labels: int32 [num_train], values in [0, len(class_names)).
    test_images: uint8 [num_test, height, width, 3].
    test_labels: int32 [num_test].
    class_names: label index -> class name.
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: list[str]


def load_tfds(
  name: str, split: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Loads a whole TensorFlow Datasets split into memory.

  Uses `tfds.load(name, split=split, data_dir=data_dir, as_supervised=True)`
  (which downloads and prepares the data set on first use) and reads it out
  in large batches. This is what `batch_size=-1` does, except that tfds
  4.9 turns `batch_size=-1` into `padded_batch(sys.maxsize)` when the
  split's size is not recorded (as under `tfds.testing.mock_data`), which
  aborts the process in TF 2.21.

  Args:
    name: a tfds name, optionally with config/version ('cifar10',
      'cifar10:3.0.2').
    split: a tfds split, e.g. 'train', 'test', 'train[:10%]'.
    data_dir: where tfds keeps its data; None for the tfds default.

  Returns:
    images: uint8 [num_examples, height, width, channels].
    labels: int32 [num_examples].
    class_names: [num_classes], from the data set's label feature.

  Raises:
    ValueError: `name` is not a tfds data set.
    RuntimeError: the data set could not be downloaded, prepared or read.
  """
  import tensorflow_datasets as tfds  # Lazy: TF import is slow and heavy.

  base_name = name.split(":")[0].split("/")[0]
  # Community data sets would need network access just to list them.
  if base_name not in tfds.list_builders(with_community_datasets=False):
    raise ValueError(
      f"{name!r} is not a tfds data set name (not in "
      "tfds.list_builders()). For images on disk use "
      "--config.data.source=folder --config.data.folder=<path> with "
      f"the layout {FOLDER_LAYOUT}."
    )
  try:
    ds, info = tfds.load(
      name,
      split=split,
      data_dir=data_dir,
      as_supervised=True,
      with_info=True,
    )
    batches = list(tfds.as_numpy(ds.batch(_TFDS_READ_BATCH)))
  except Exception as e:  # Download, prepare and read errors vary widely.
    raise RuntimeError(
      f"tfds could not load {name!r} split {split!r} "
      f"(data_dir={data_dir!r}): {type(e).__name__}: {e}\n"
      f"Without network access: {offline_hint(base_name)}"
    ) from e
  if not batches:
    raise RuntimeError(f"tfds split {name!r} {split!r} is empty.")
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches]).astype(np.int32)
  label_feature = info.features[info.supervised_keys[1]]
  return images.astype(np.uint8), labels, list(label_feature.names)


def offline_hint(base_name: str) -> str:
  """What to use instead of tfds without network access, the files
  comparable with the paper first."""
  folder = ("images on disk: --config.data.source=folder --config.data.folder=<path> with "
            f"the layout {FOLDER_LAYOUT}")
  if base_name == "cifar10":
    return ("use the original CIFAR-10 files, the paper's input: --config.data.source="
            "cifar10_python --config.data.folder=<cifar-10-python.tar.gz or the extracted "
            f"folder>; or {folder} (a lossy copy such as JPEGs is not the paper's input).")
  if base_name == "mnist":
    return ("use the four official MNIST IDX files: --config.data.source=mnist "
            "--config.data.folder=<the folder of train-images-idx3-ubyte(.gz) and the "
            "other three>.")
  return f"use {folder}."


def load_dataset(data_config: Any) -> Dataset:
  """Loads the train and test splits named by the data config.

  Args:
    data_config: an ml_collections.ConfigDict with keys
      `source` (one of VALID_SOURCES), `name` (tfds name, used by 'tfds'),
      `folder` (data folder or CIFAR-10 directory/archive, used by the
      PATH_SOURCES), `tfds_data_dir` (None or a path, used by 'tfds'),
      `train_split` and `test_split`.

  Returns:
    The Dataset, images uint8 [N, H, W, C], labels int32 [N].

  Raises:
    ValueError: unknown source, or train and test class lists differ; and
      the errors of `load_folder` / `load_tfds`.
  """
  source = data_config.source
  if source == "folder":
    load = functools.partial(load_folder, data_config.folder)
  elif source == "tfds":
    load = functools.partial(
      load_tfds, data_config.name, data_dir=data_config.tfds_data_dir or None
    )
  elif source in CIFAR10_SOURCES:
    load = functools.partial(load_cifar10, data_config.folder, source=source)
  else:
    raise ValueError(f"Unknown data source {source!r}; valid sources: {VALID_SOURCES}.")
  train_images, train_labels, class_names = load(split=data_config.train_split)
  test_images, test_labels, test_class_names = load(split=data_config.test_split)
  if class_names != test_class_names:
    raise ValueError(
      f"Train split {data_config.train_split!r} has classes "
      f"{class_names} but test split {data_config.test_split!r} has "
      f"{test_class_names}; labels would not match."
    )
  return Dataset(train_images, train_labels, test_images, test_labels, class_names)
