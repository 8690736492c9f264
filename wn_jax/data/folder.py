"""Images in class folders: `<folder>/<split>/<class name>/<image file>`.

`load_folder` reads a split with Pillow: class names sorted alphabetically
give the label indices, so the class list must be the same in every split.
`lossy_files_in` / `warn_if_lossy_and_whitened` flag a folder of JPEG or
WebP files that is about to be ZCA-whitened.

This module reads files only; choosing a source, whitening and caching are
the later modules' work (`sources`, `zca`, `cache`).
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

FOLDER_LAYOUT = "<folder>/<split>/<class name>/<image file>"

# How to get data when the expected folder or tfds download is not available;
# appended to the error messages below.
_FOLDER_HINT = (
  "Expected the layout " + FOLDER_LAYOUT + " (e.g. <folder>/train/airplane/"
  "0000.jpg). Extract the image tarball (e.g. `tar -xzf cifar10-jpeg.tar.gz "
  "-C <dir>`) and pass --config.data.source=folder "
  "--config.data.folder=<dir>/cifar10-jpeg, or use --config.data.source=tfds "
  "on a machine that can download."
)


def visible_entries(path: str) -> list[str]:
  """Sorted names in `path`, skipping hidden ones (`.DS_Store`, `._x.jpg`)."""
  return sorted(name for name in os.listdir(path) if not name.startswith("."))


def _read_rgb(path: str) -> np.ndarray:
  """Decodes one image file to uint8 [height, width, 3]."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, ValueError, SyntaxError) as e:
    # PIL raises UnidentifiedImageError (an OSError) for non-images and
    # OSError / SyntaxError / ValueError for truncated or corrupt files.
    raise ValueError(f"Could not read {path!r} as an image: {type(e).__name__}: {e}") from e


def list_split(root: str, split: str) -> tuple[list[str], list[str], list[int]]:
  """Finds the image files of one split: (class_names, paths, labels)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"Data folder {root!r} does not exist. {_FOLDER_HINT}")
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(
      f"Split folder {split_dir!r} does not exist (data folder {root!r} "
      f"contains {visible_entries(root)}). {_FOLDER_HINT}"
    )
  class_names = [
    name for name in visible_entries(split_dir) if os.path.isdir(os.path.join(split_dir, name))
  ]
  if not class_names:
    raise ValueError(f"Split folder {split_dir!r} has no class folders. {_FOLDER_HINT}")
  paths, labels = [], []
  for label, class_name in enumerate(class_names):
    class_dir = os.path.join(split_dir, class_name)
    # scandir's is_file() mostly needs no stat call: listing 60,000 files
    # stays cheap, which the data cache's fingerprint relies on.
    with os.scandir(class_dir) as entries:
      files = sorted(
        entry.path for entry in entries if not entry.name.startswith(".") and entry.is_file()
      )
    if not files:
      raise ValueError(
        f"Class folder {class_dir!r} (class {class_name!r}) has no image files. {_FOLDER_HINT}"
      )
    paths.extend(files)
    labels.extend([label] * len(files))
  return class_names, paths, labels


def load_folder(
  root: str, split: str, *, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Reads `root/<split>/<class name>/<image file>` into memory.

  Class folders sorted alphabetically give the label indices; files within a
  class are read in sorted order, so the result is deterministic. Images are
  converted to RGB and must all have the same size. Hidden files and
  folders (names starting with '.') are skipped.

  Args:
    root: the data folder.
    split: the split's subfolder, e.g. 'train' or 'test'.
    num_threads: decoding threads (Pillow releases the GIL while decoding);
      None lets the thread pool choose.

  Returns:
    images: uint8 [num_examples, height, width, 3].
    labels: int32 [num_examples].
    class_names: [num_classes], label index -> class folder name.

  Raises:
    FileNotFoundError: `root` or `root/split` does not exist.
    ValueError: no class folders, an empty class folder, a file that is not
      a readable image, or images of different sizes.
  """
  class_names, paths, labels = list_split(root, split)
  first = _read_rgb(paths[0])
  images = np.empty((len(paths),) + first.shape, dtype=np.uint8)

  def read_into(index: int) -> tuple[int, ...] | None:
    # Writing straight into `images` keeps peak memory at one copy.
    image = _read_rgb(paths[index])
    if image.shape != first.shape:
      return image.shape
    images[index] = image
    return None

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    shapes = list(pool.map(read_into, range(len(paths)), chunksize=256))

  odd = {}  # shape -> first file of that shape
  for path, shape in zip(paths, shapes):
    if shape is not None:
      odd.setdefault(shape, path)
  if odd:
    examples = [f"{first.shape[:2]}: {paths[0]!r}"] + [
      f"{shape[:2]}: {path!r}" for shape, path in odd.items()
    ]
    raise ValueError(
      f"Images in {os.path.join(root, split)!r} have different sizes "
      "(height, width); one file of each size: " + "; ".join(examples)
    )
  return images, np.asarray(labels, dtype=np.int32), class_names


# Image formats that lose information in encoding. ZCA divides every
# eigen-direction by its standard deviation, so the low-variance directions
# where such an encoder leaves its residue come out at unit variance.
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp")


def lossy_files_in(root: str, split: str) -> dict[str, int]:
  """Counts the files of `<root>/<split>/<class>/` whose extension is lossy.

  Returns:
    {extension (lower case): number of files}; empty when none is lossy or
    the split folder does not exist.
  """
  split_dir = os.path.join(root, split)
  counts: dict[str, int] = {}
  if not os.path.isdir(split_dir):
    return counts
  for class_name in visible_entries(split_dir):
    class_dir = os.path.join(split_dir, class_name)
    if not os.path.isdir(class_dir):
      continue
    with os.scandir(class_dir) as entries:
      for entry in entries:
        extension = os.path.splitext(entry.name)[1].lower()
        if extension in LOSSY_EXTENSIONS:
          counts[extension] = counts.get(extension, 0) + 1
  return counts


def warn_if_lossy_and_whitened(data_config: Any) -> str | None:
  """Logs (and returns) a warning when ZCA whitens lossily encoded images.

  Only `source='folder'` reads encoded image files; the tfds and CIFAR-10
  sources hold the original pixels.
  """
  if data_config.source != "folder":
    return None
  counts = lossy_files_in(data_config.folder, data_config.train_split)
  if not counts:
    return None
  found = ", ".join(f"{count} {extension}" for extension, count in sorted(counts.items()))
  message = (
    f"The training images in {os.path.join(data_config.folder, data_config.train_split)!r} "
    f"are in a lossy format ({found} files) and are ZCA-whitened (regularisation "
    f"{float(data_config.zca_regularization):g}). ZCA scales every eigen-direction of the "
    "pixel covariance to unit variance, so it amplifies the compression artefacts that live "
    "in the low-variance directions: results on this copy are NOT comparable with numbers "
    "on the original data (on CIFAR-10, use --config.data.source=cifar10_python). "
    "See docs/REPRODUCTION.md."
  )
  logging.warning(message)
  return message
