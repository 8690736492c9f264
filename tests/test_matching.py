"""wn_jax.study.matching: a copy matched to its originals, and their pixel distance."""

import numpy as np
import pytest
from conftest import perturbed, random_originals

from wn_jax.study import matching

# ---------------------------------------------------------------------------
# Matching.


def test_nearest_agrees_with_a_direct_computation():
  originals, _ = random_originals(num_per_class=30)
  queries = perturbed(originals[::7], amplitude=40)
  found = matching.nearest(queries, originals, chunk_size=4)
  diff = queries[:, None].astype(np.float64) - originals[None].astype(np.float64)
  msd = (diff**2).reshape(len(queries), len(originals), -1).mean(axis=2)
  np.testing.assert_array_equal(found.index, msd.argmin(axis=1))
  np.testing.assert_allclose(found.msd, msd.min(axis=1), rtol=1e-5)
  np.testing.assert_allclose(found.second_msd, np.sort(msd, axis=1)[:, 1], rtol=1e-5)


def test_a_shuffled_perturbed_copy_is_matched_to_itsrandom_originals():
  originals, labels = random_originals()
  permutation = np.random.default_rng(2).permutation(len(originals))
  copy = perturbed(originals)[permutation]
  index, report = matching.match(copy, labels[permutation], originals, labels, sample_size=50)
  np.testing.assert_array_equal(index, permutation)
  assert report.num_images == len(originals)
  assert report.sample_size == 50 and report.sample_nearest_is_match == 50
  assert report.ratio_min > 1
  mean_abs = np.abs(copy.astype(int) - originals[permutation]).reshape(len(copy), -1).mean(1)
  assert report.mean_abs_max == pytest.approx(mean_abs.max())
  assert report.mean_abs_mean == pytest.approx(mean_abs.mean())
  # Shuffled, the copy's order within a class is not the original's.
  assert report.same_as_class_order < len(originals) // 2


def test_a_copy_in_class_order_agrees_with_the_class_order_hypothesis():
  originals, labels = random_originals()
  # The copy lists class by class, in the original order within each class,
  # while the original interleaves the classes.
  interleaved = np.argsort(np.tile(np.arange(40), 3), kind="stable")
  originals, labels = originals[interleaved], labels[interleaved]
  by_class = np.argsort(labels, kind="stable")
  copy, copy_labels = perturbed(originals)[by_class], labels[by_class]
  np.testing.assert_array_equal(matching.class_order_match(copy_labels, labels), by_class)
  index, report = matching.match(copy, copy_labels, originals, labels)
  np.testing.assert_array_equal(index, by_class)
  assert report.same_as_class_order == len(originals)


def test_a_copy_missing_an_image_fails_with_a_clear_error():
  originals, labels = random_originals()
  copy = perturbed(originals)
  keep = np.arange(len(copy)) != 17
  with pytest.raises(ValueError, match=r"119 copy images for 120 originals.*1 originals "
                                       r"matched by no copy image \(\[17\]\)"):
    matching.match(copy[keep], labels[keep], originals, labels)
  with pytest.raises(ValueError, match="Class 0: 39 copy images but 40 originals"):
    matching.class_order_match(labels[keep], labels)


def test_a_copy_with_a_duplicate_fails_with_a_clear_error():
  originals, labels = random_originals()
  copy = perturbed(originals)
  copy[5] = perturbed(originals[6:7], seed=9)[0]  # image 6 twice, image 5 never
  with pytest.raises(ValueError, match=r"original 6 <- copy \[5, 6\].*no copy image \(\[5\]\)"):
    matching.match(copy, labels, originals, labels)


# ---------------------------------------------------------------------------
# Pixel distance.


def test_pixel_distance_is_psnr_of_the_pairs():
  originals, _ = random_originals()
  copy = perturbed(originals, amplitude=5)
  d = matching.pixel_distance(copy, originals, chunk_size=7)
  diff = copy.astype(np.float64) - originals
  assert d.mean_abs == pytest.approx(np.abs(diff).mean())
  assert d.psnr_db == pytest.approx(10 * np.log10(255**2 / (diff**2).mean()))
  assert d.channel_psnr_db["G"] == pytest.approx(10 * np.log10(255**2 / (diff[..., 1]**2).mean()))
  # Y is a weighted mean of R, G, B: independent errors shrink in it.
  y = diff @ np.array([0.299, 0.587, 0.114])
  assert d.channel_psnr_db["Y"] == pytest.approx(10 * np.log10(255**2 / (y**2).mean()), rel=1e-5)
  assert matching.pixel_distance(originals, originals).psnr_db == np.inf
