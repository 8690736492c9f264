"""Tests for wn_jax.study.spectrum: a known spectrum is recovered, numbers are right."""

import json

import numpy as np
import pytest

from wn_jax.data import zca
from wn_jax.study import spectrum

# (1/128)^2 / 12: uint8 rounding after (x - 127.5)/128, written out here.
ROUNDING = (1.0 / 128.0) ** 2 / 12.0


@pytest.fixture(scope="module")
def synthetic():
  # 48 dims, eigenvalues 0.01 k^-3: from rank 13 on below the rounding noise.
  return spectrum.synthetic_images(seed=3, num_examples=40_000, size=4, top=0.01, exponent=3.0)


def test_known_power_law_plus_rounding_noise_is_recovered(synthetic):
  images, known = synthetic
  # The expectation from the construction alone, not from the code under test.
  population = 0.01 * np.arange(1, 49, dtype=np.float64) ** -3.0
  np.testing.assert_allclose(known, np.sort(population + ROUNDING), rtol=1e-12)
  assert (population < ROUNDING).sum() == 36

  measured = spectrum.analyse(images, planes=False)["eigenvalues"]
  # Sampling error: ~sqrt(2/N) = 0.7% per eigenvalue, and the 36 near-equal
  # floor eigenvalues spread by about +-2 sqrt(dim/N) = +-7% (Marchenko-Pastur).
  np.testing.assert_allclose(measured, known, rtol=0.12)
  # The floor is the rounding noise: without it the smallest would be ~1e-7.
  assert 0.85 * ROUNDING < measured[0] < ROUNDING


def test_spectrum_equals_numpy_svd_of_the_centred_data(synthetic):
  images, _ = synthetic
  rows = (images.reshape(len(images), -1).astype(np.float64) - 127.5) / 128.0
  singular = np.linalg.svd(rows - rows.mean(axis=0), compute_uv=False)
  expected = np.sort(singular**2 / len(rows))
  result = spectrum.analyse(images, planes=False)
  np.testing.assert_allclose(result["eigenvalues"], expected, rtol=1e-8, atol=1e-15)
  assert result["below"] == {t: int((expected < t).sum()) for t in spectrum.THRESHOLDS}


def test_regularization_effect_matches_the_whitened_data(synthetic):
  images, _ = synthetic
  rows = zca.zca_input(images)
  eigenvalues = zca.covariance_spectrum(rows).eigenvalues
  for reg in (1e-5, 1e-3):
    effect = spectrum.regularization_effect(eigenvalues, reg)
    whitened = zca.apply_zca(zca.fit_zca(rows, reg), rows).astype(np.float64)
    # Total variance of the actually whitened data, and the part of it in the
    # eigen-directions with S < reg, measured on the data.
    assert effect.whitened_variance == pytest.approx(whitened.var(axis=0).sum(), rel=1e-4)
    _, eigenvectors = np.linalg.eigh(np.cov(rows.astype(np.float64), rowvar=False, bias=True))
    low = eigenvectors[:, eigenvalues < reg]
    share = (whitened @ low).var(axis=0).sum() / whitened.var(axis=0).sum()
    assert effect.share_below == pytest.approx(share, rel=1e-3, abs=1e-6)
    assert effect.num_below == int((eigenvalues < reg).sum())
    assert effect.max_gain == pytest.approx(1 / np.sqrt(eigenvalues.min() + reg))


def test_gray_images_have_no_chroma_variance():
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, size=(500, 4, 4, 1), dtype=np.uint8).repeat(3, axis=-1)
  planes = spectrum.plane_spectra(gray)
  assert planes["Cb"].max() < 1e-9 and planes["Cr"].max() < 1e-9
  # Y = R = G = B here: its spectrum is that of one channel, computed directly.
  one = (gray[..., 0].reshape(500, -1).astype(np.float64) - 127.5) / 128.0
  np.testing.assert_allclose(planes["Y"], np.linalg.eigvalsh(np.cov(one, rowvar=False, bias=True)),
                             rtol=1e-4)


def test_synthetic_that_would_clip_is_refused():
  with pytest.raises(ValueError, match="clip"):
    spectrum.synthetic_images(seed=0, num_examples=100, size=2, top=10.0, exponent=0.0)


def test_command_line_on_a_folder_and_synthetic(tmp_path, capsys):
  from conftest import make_image_folder
  folder = make_image_folder(tmp_path / "images", num_train_per_class=10, num_test_per_class=1)
  spectrum.main([folder, "--synthetic", "--synthetic-examples", "2000", "--synthetic-size", "4",
                 "--synthetic-top", "0.5", "--plot", str(tmp_path / "s.png"),
                 "--json", str(tmp_path / "s.json")])
  out = capsys.readouterr().out
  assert "| images | 30 | 432 |" in out and "| images | Cb |" in out
  assert "| synthetic 0.5 k^-2 | 2000 | 48 |" in out
  assert (tmp_path / "s.png").stat().st_size > 10_000
  saved = json.loads((tmp_path / "s.json").read_text())
  assert len(saved["images"]["eigenvalues_descending"]) == 432
  assert set(saved["images"]["planes"]) == {"Y", "Cb", "Cr"}


def test_saved_spectra_come_back_with_the_same_tables(tmp_path, capsys):
  images, _ = spectrum.synthetic_images(seed=1, num_examples=3000, size=4, top=0.5, exponent=2.0)
  results = {"a": spectrum.analyse(images)}
  table = spectrum.markdown_tables(results)
  path = tmp_path / "a.json"
  path.write_text(json.dumps(spectrum._json_ready(results)))
  spectrum.main(["--with", str(path), "--plot", str(tmp_path / "a.png")])
  assert table in capsys.readouterr().out
