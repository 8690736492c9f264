"""The catalogue of figures drawn from committed records (wn_jax.study.regenerate)."""

import os

import pytest
from conftest import REPO_ROOT

from wn_jax.study import regenerate

# Figures drawn from data sets, not records (docs/REPRODUCTION.md).
DRAWN_FROM_DATA = {"zca_spectrum_jpeg.png", "zca_spectrum_original.png",
                   "zca_spectrum_reencoded.png", "jpeg_error_share.png"}


@pytest.fixture
def at_root(monkeypatch):
  monkeypatch.chdir(REPO_ROOT)


def test_every_committed_figure_of_records_is_in_the_catalogue(at_root):
  figures = regenerate.catalogue()  # raises if a record folder is missing
  committed = {name for name in os.listdir("docs") if name.endswith(".png")}
  assert set(figures) == committed - DRAWN_FROM_DATA
  for tool, arguments in figures.values():
    assert tool in regenerate.TOOLS
    assert all(os.path.isdir(a) for a in arguments if a.startswith("docs/runs/"))


def test_a_figure_is_redrawn_and_compared_pixel_by_pixel(at_root, tmp_path, capsys):
  figures = regenerate.catalogue()
  output = tmp_path / "figure5.png"
  regenerate.draw(figures, "figure5_cpu_dqn_minatar_breakout.png", str(output))
  assert regenerate.pixel_difference(str(output), str(output)) == "identical"
  other = tmp_path / "other.png"
  regenerate.draw(figures, "figure5_cpu_dqn_minatar.png", str(other))
  assert regenerate.pixel_difference(str(output), str(other)) != "identical"


def test_an_unknown_figure_is_refused(at_root):
  with pytest.raises(SystemExit):
    regenerate.main(["--only", "no_such_figure.png"])
