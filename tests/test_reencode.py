"""Tests for wn_jax.study.reencode on tiny generated folders."""

import os

import numpy as np
import pytest
from PIL import Image

from wn_jax.data import cifar10
from wn_jax.data.folder import load_folder
from wn_jax.study import reencode

SIZE = 16


def _photo_like(rng):
  """uint8 [SIZE, SIZE, 3]: smooth colour gradients + noise, like a photo."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
  base = np.stack([200 * xx, 180 * yy, 120 + 60 * xx * yy], axis=-1)
  return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _make_folder(root, images_per_class=3):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for name in ("cat", "dog"):
      os.makedirs(os.path.join(root, split, name))
      for i in range(images_per_class):
        Image.fromarray(_photo_like(rng)).save(os.path.join(root, split, name, f"{i:04d}.png"))
  return str(root)


def _mean_abs(a, b):
  return np.abs(a.astype(np.int64) - b).mean()


def test_writes_the_folder_layout_and_reports_the_true_difference(tmp_path):
  src = _make_folder(tmp_path / "src")
  dst = str(tmp_path / "q50")
  differences = reencode.reencode(src, dst, reencode.Encoding("jpeg", 50, "4:2:0"))

  for split in ("train", "test"):
    original, labels, classes = load_folder(src, split)
    copy, copy_labels, copy_classes = load_folder(dst, split)
    assert copy_classes == classes and (copy_labels == labels).all()
    assert sorted(os.listdir(os.path.join(dst, split, "cat"))) == ["0000.jpg", "0001.jpg",
                                                                     "0002.jpg"]
    # The reported numbers are those of the files on disk, computed here anew.
    diff = copy.astype(np.float64) - original
    assert differences[split].num_images == len(original)
    assert differences[split].mean_abs == pytest.approx(np.abs(diff).mean(), rel=1e-9)
    expected_psnr = 10 * np.log10(255.0**2 / np.mean(diff**2))
    assert differences[split].psnr_db == pytest.approx(expected_psnr, rel=1e-9)
    assert 1.0 < differences[split].mean_abs < 20.0  # lossy, but the same images
  assert not [name for name in os.listdir(tmp_path) if ".partial" in name]


def test_lower_quality_loses_more(tmp_path):
  src = _make_folder(tmp_path / "src")
  error = {q: reencode.reencode(src, str(tmp_path / f"q{q}"), reencode.Encoding("jpeg", q,
                                "4:4:4"))["train"].mean_abs for q in (20, 60, 95)}
  assert error[20] > error[60] > error[95]


def test_quality_100_without_subsampling_is_near_lossless(tmp_path):
  src = _make_folder(tmp_path / "src")
  difference = reencode.reencode(src, str(tmp_path / "q100"),
                                 reencode.Encoding("jpeg", 100, "4:4:4"))["train"]
  assert difference.mean_abs < 1.0 and difference.psnr_db > 45


def _ycbcr_chroma(rgb):
  return np.asarray(Image.fromarray(rgb).convert("YCbCr"), dtype=np.float64)[..., 1:]


def test_444_keeps_chroma_detail_that_420_loses():
  # Red and blue single-pixel columns: all the detail is high-frequency chroma.
  pattern = np.zeros((SIZE, SIZE, 3), np.uint8)
  pattern[:, 0::2] = (200, 40, 40)
  pattern[:, 1::2] = (40, 40, 200)
  chroma = _ycbcr_chroma(pattern)
  errors = {}
  for subsampling in ("4:4:4", "4:2:0"):
    decoded = reencode.decode(reencode.encode(pattern, reencode.Encoding("jpeg", 90, subsampling)))
    errors[subsampling] = np.abs(_ycbcr_chroma(decoded) - chroma).mean()
  assert errors["4:4:4"] < 5 < 20 < errors["4:2:0"]


def test_png_export_of_cifar10_pickles_is_lossless(tmp_path):
  from test_cifar10_files import CLASS_NAMES, _batches, _write_python
  folder = _write_python(tmp_path / "cifar-10-batches-py", _batches())
  dst = str(tmp_path / "png")
  differences = reencode.reencode(folder, dst, reencode.Encoding("png"), source="cifar10_python")
  assert differences["train"].mean_abs == 0 and differences["train"].psnr_db == np.inf

  for split in ("train", "test"):
    images, labels, class_names = cifar10.load_cifar10(folder, split)
    copy, copy_labels, copy_classes = load_folder(dst, split)
    # The folder orders by class, then file name (numbered in file order).
    order = np.argsort(labels, kind="stable")
    used = sorted(set(CLASS_NAMES[label] for label in labels))
    assert copy_classes == used
    np.testing.assert_array_equal(copy, images[order])
    np.testing.assert_array_equal([copy_classes[i] for i in copy_labels],
                                  [class_names[i] for i in labels[order]])


@pytest.mark.parametrize("encoding, message", [
  (reencode.Encoding("jpeg", 0, "4:2:0"), r"quality must lie in \[1, 100\], got 0"),
  (reencode.Encoding("jpeg", 101, "4:2:0"), r"got 101"),
  (reencode.Encoding("jpeg", 50, "4:1:1"), r"subsampling must be one of"),
  (reencode.Encoding("webp", 50, "4:2:0"), r"format must be one of"),
])
def test_bad_encoding(tmp_path, encoding, message):
  src = _make_folder(tmp_path / "src")
  with pytest.raises(ValueError, match=message):
    reencode.reencode(src, str(tmp_path / "dst"), encoding)
  assert not os.path.exists(tmp_path / "dst")


def test_existing_non_empty_destination_is_refused(tmp_path):
  src = _make_folder(tmp_path / "src")
  dst = tmp_path / "dst"
  dst.mkdir()
  (dst / "keep.txt").write_text("precious")
  with pytest.raises(ValueError, match="exists and is not an empty directory"):
    reencode.reencode(src, str(dst), reencode.Encoding())
  assert os.listdir(dst) == ["keep.txt"]
  # An empty directory is fine.
  (dst / "keep.txt").unlink()
  reencode.reencode(src, str(dst), reencode.Encoding())
  assert sorted(os.listdir(dst)) == ["test", "train"]


def test_destination_inside_the_source_is_refused(tmp_path):
  src = _make_folder(tmp_path / "src")
  with pytest.raises(ValueError, match="inside the source"):
    reencode.reencode(src, os.path.join(src, "copy"), reencode.Encoding())


def test_failed_run_leaves_nothing_behind(tmp_path):
  src = _make_folder(tmp_path / "src")
  with open(os.path.join(src, "test", "dog", "0001.png"), "wb") as f:
    f.write(b"broken")
  with pytest.raises(ValueError, match=r"0001\.png"):
    reencode.reencode(src, str(tmp_path / "dst"), reencode.Encoding())
  assert sorted(os.listdir(tmp_path)) == ["src"]


def test_failure_while_writing_removes_the_partial_copy(tmp_path, monkeypatch):
  src = _make_folder(tmp_path / "src")
  calls = []
  real_encode = reencode.encode

  def failing_encode(image, encoding):
    calls.append(1)
    if len(calls) > 4:
      raise OSError("No space left on device")
    return real_encode(image, encoding)

  monkeypatch.setattr(reencode, "encode", failing_encode)
  with pytest.raises(OSError, match="No space"):
    reencode.reencode(src, str(tmp_path / "dst"), reencode.Encoding())
  assert sorted(os.listdir(tmp_path)) == ["src"]


def test_command_line(tmp_path, capsys):
  src = _make_folder(tmp_path / "src")
  reencode.main([src, str(tmp_path / "dst"), "--quality", "90", "--subsampling", "4:4:4"])
  out = capsys.readouterr().out
  assert "| jpeg q90 4:4:4 | train | 6 |" in out and "| test | 6 |" in out
  with pytest.raises(SystemExit, match="exists and is not an empty directory"):
    reencode.main([src, str(tmp_path / "dst")])
