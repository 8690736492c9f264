r"""Writes a re-encoded copy of an image data set, and measures what it changed.

Reads a data set through `wn_jax.data.sources` (an image folder, or the original
CIFAR-10 files) and writes it as `DST/<split>/<class name>/<stem>.<ext>`,
the layout of `source='folder'`, as JPEG at a chosen quality and chroma
subsampling or as lossless PNG. Every image is encoded, decoded again in
memory and compared with its source pixels, so the command prints how far the
copy is from its source: mean absolute pixel difference and PSNR per split.

  # A JPEG copy at quality 50 with 4:2:0 chroma subsampling:
  python -m wn_jax.study.reencode /data/cifar10-jpeg /data/cifar10-jpeg-q50 \
      --quality 50 --subsampling 4:2:0
  # The original CIFAR-10 pickles exported losslessly to a folder:
  python -m wn_jax.study.reencode /data/cifar-10-python.tar.gz /data/cifar10-png \
      --source cifar10_python --format png

File stems are kept for a folder source (`train/cat/0001.jpg` becomes
`train/cat/0001.png`) and numbered per class in file order otherwise. The
copy is written into `DST.partial-<pid>` and renamed to DST when complete,
so a DST that exists is whole.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import math
import os
import shutil
import sys
from typing import NamedTuple

import ml_collections
import numpy as np
from PIL import Image

from wn_jax.data import sources
from wn_jax.data.folder import list_split

FORMATS = ("jpeg", "png")
EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}
# Pillow's `subsampling` codes for its JPEG encoder.
SUBSAMPLINGS = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
SPLITS = ("train", "test")


class Encoding(NamedTuple):
  """How to encode: format 'jpeg' (quality 1..100, subsampling) or 'png'."""

  format: str = "jpeg"
  quality: int = 75
  subsampling: str = "4:2:0"


class Difference(NamedTuple):
  """Pixel difference of a re-encoded split from its source (uint8 scale).

  Attributes:
    num_images: images compared.
    mean_abs: mean |decoded - source| over all pixels and channels.
    psnr_db: 10 log10(255^2 / mean squared difference); inf if identical.
    mean_bytes: mean encoded file size.
  """

  num_images: int
  mean_abs: float
  psnr_db: float
  mean_bytes: float


def check_encoding(encoding: Encoding) -> None:
  """Raises ValueError for an unknown format, quality or subsampling."""
  if encoding.format not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {encoding.format!r}.")
  if encoding.format == "jpeg":
    if not 1 <= encoding.quality <= 100:
      raise ValueError(f"JPEG quality must lie in [1, 100], got {encoding.quality}.")
    if encoding.subsampling not in SUBSAMPLINGS:
      raise ValueError(
        f"subsampling must be one of {tuple(SUBSAMPLINGS)}, got {encoding.subsampling!r}."
      )


def encode(image: np.ndarray, encoding: Encoding) -> bytes:
  """uint8 [height, width, 3] -> the bytes of one image file."""
  buffer = io.BytesIO()
  if encoding.format == "jpeg":
    Image.fromarray(image).save(
      buffer, "JPEG", quality=encoding.quality, subsampling=SUBSAMPLINGS[encoding.subsampling]
    )
  else:
    Image.fromarray(image).save(buffer, "PNG")
  return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
  """The bytes of an image file -> uint8 [height, width, 3] (as load_folder)."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _file_stems(source: str, folder: str, split: str, labels: np.ndarray) -> list[str]:
  """One file stem per image: the source's own for a folder, else numbered per class."""
  if source == "folder":
    _, paths, _ = list_split(folder, split)  # load_folder's order
    return [os.path.splitext(os.path.basename(path))[0] for path in paths]
  counts: dict[int, int] = {}
  stems = []
  for label in labels.tolist():
    stems.append(f"{counts.get(label, 0):05d}")
    counts[label] = counts.get(label, 0) + 1
  return stems


def write_split(
  images: np.ndarray,
  labels: np.ndarray,
  class_names: list[str],
  stems: list[str],
  split_dir: str,
  encoding: Encoding,
  *,
  num_threads: int | None = None,
) -> Difference:
  """Encodes and writes `images: uint8 [N, H, W, 3]` under `split_dir/<class>/`.

  Returns the difference between the decoded files and `images`.
  """
  check_encoding(encoding)
  for class_name in class_names:
    os.makedirs(os.path.join(split_dir, class_name), exist_ok=True)
  extension = EXTENSIONS[encoding.format]

  def write(index: int) -> tuple[float, float, int]:
    data = encode(images[index], encoding)
    path = os.path.join(split_dir, class_names[labels[index]], stems[index] + extension)
    with open(path, "xb") as f:  # 'x': two images with one name is an error.
      f.write(data)
    diff = decode(data).astype(np.int64) - images[index]
    return float(np.abs(diff).sum()), float((diff * diff).sum()), len(data)

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    sums = np.array(list(pool.map(write, range(len(images)), chunksize=64)))
  num_values = images.size
  mse = sums[:, 1].sum() / num_values
  return Difference(
    num_images=len(images),
    mean_abs=sums[:, 0].sum() / num_values,
    psnr_db=math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse),
    mean_bytes=sums[:, 2].mean(),
  )


def reencode(
  src: str,
  dst: str,
  encoding: Encoding,
  *,
  source: str = "folder",
  num_threads: int | None = None,
) -> dict[str, Difference]:
  """Writes the re-encoded copy of data set `src` to `dst` (see module doc).

  Args:
    src: the data folder (source 'folder') or CIFAR-10 directory / .tar.gz.
    dst: the folder to create; must not exist or be empty.
    encoding: format, JPEG quality and chroma subsampling.
    source: 'folder', 'cifar10_python' or 'cifar10_binary'.
    num_threads: encoding threads; None lets the thread pool choose.

  Returns:
    {split: Difference of the written copy from the source}.

  Raises:
    ValueError: bad encoding, unknown source, or `dst` exists and is not an
      empty directory; and the loaders' errors for `src`.
  """
  check_encoding(encoding)
  if source not in sources.PATH_SOURCES:
    raise ValueError(f"source must be one of {sources.PATH_SOURCES}, got {source!r}.")
  if os.path.lexists(dst) and not (os.path.isdir(dst) and not os.listdir(dst)):
    raise ValueError(f"Destination {dst!r} exists and is not an empty directory; "
                     "choose a new path or remove it.")
  if os.path.abspath(dst).startswith(os.path.abspath(src) + os.sep):
    raise ValueError(f"Destination {dst!r} lies inside the source {src!r}.")
  config = ml_collections.ConfigDict(dict(
    source=source, name="", folder=src, tfds_data_dir="", train_split="train",
    test_split="test"))
  dataset = sources.load_dataset(config)
  partial = f"{os.path.abspath(dst).rstrip(os.sep)}.partial-{os.getpid()}"
  differences = {}
  try:
    for split, images, labels in (
      ("train", dataset.train_images, dataset.train_labels),
      ("test", dataset.test_images, dataset.test_labels),
    ):
      differences[split] = write_split(
        images, labels, dataset.class_names, _file_stems(source, src, split, labels),
        os.path.join(partial, split), encoding, num_threads=num_threads)
    os.replace(partial, dst)  # dst is absent or an empty directory.
  finally:
    if os.path.exists(partial):
      shutil.rmtree(partial)
  return differences


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m wn_jax.study.reencode", description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="data folder <src>/{train,test}/<class>/<image>, or the "
                      "CIFAR-10 directory / .tar.gz with --source cifar10_*")
  parser.add_argument("dst", help="the folder to write (must not exist, or be empty)")
  parser.add_argument("--source", default="folder", choices=sources.PATH_SOURCES)
  parser.add_argument("--format", default="jpeg", choices=FORMATS)
  parser.add_argument("--quality", type=int, default=75, help="JPEG quality, 1..100")
  parser.add_argument("--subsampling", default="4:2:0", choices=tuple(SUBSAMPLINGS),
                      help="JPEG chroma subsampling (4:4:4 = none)")
  parser.add_argument("--threads", type=int, default=None)
  args = parser.parse_args(argv)
  encoding = Encoding(args.format, args.quality, args.subsampling)
  try:
    differences = reencode(args.src, args.dst, encoding, source=args.source,
                           num_threads=args.threads)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  what = ("png" if args.format == "png"
          else f"jpeg q{args.quality} {args.subsampling}")
  print("| copy | split | images | mean abs diff | PSNR (dB) | bytes/image |")
  print("| --- | --- | --- | --- | --- | --- |")
  for split, d in differences.items():
    print(f"| {what} | {split} | {d.num_images} | {d.mean_abs:.3f} | {d.psnr_db:.2f} | "
          f"{d.mean_bytes:.0f} |")


if __name__ == "__main__":
  main()
