"""wn_jax.study.plot_bound: the Figure 3 style plot and its table, from records."""

import json

from wn_jax.study import plot_bound


def _write_run(folder, parameterization, seed, elbos, subset):
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(
      {"seed": seed, "model": {"parameterization": parameterization}}))
  lines = [{"step": 5 * (i + 1), "subset_test_elbo": v} for i, v in enumerate(subset)]
  lines += [{"step": 10 * (e + 1), "epoch": e + 1, "test_elbo": v, "ema_test_elbo": v - 1}
            for e, v in enumerate(elbos)]
  lines.append({"step": 10 * len(elbos), "final": 1, "test_iwae_k8_n4": elbos[-1] + 2})
  (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
  return str(folder)


def test_the_table_pairs_seeds_and_the_figure_is_written(tmp_path):
  runs = [_write_run(tmp_path / "n0", "normal", 0, [-100.0, -90.0], [-120, -105, -95, -89]),
          _write_run(tmp_path / "n1", "normal", 1, [-102.0, -94.0], [-121, -106, -96, -93]),
          _write_run(tmp_path / "w0", "wn", 0, [-99.0, -88.0], [-119, -104, -94, -87]),
          _write_run(tmp_path / "w1", "wn", 1, [-100.0, -91.0], [-120, -105, -95, -90])]
  table = plot_bound.plot_bound(runs, str(tmp_path / "bound.png"))
  assert (tmp_path / "bound.png").stat().st_size > 0
  lines = table.splitlines()
  # normal, epoch 2: mean -92, standard error std(ddof=1)/sqrt(2) = 2.
  assert "| normal | 2 | 2 | -92.00 +- 2.00 (-90.00, -94.00) | -93.00 | - |" in lines
  # wn minus normal, the same seeds paired: +1, +2 at epoch 1; +2, +3 at epoch 2.
  assert "| wn | 1 | 2 | -99.50 +- 0.50 (-99.00, -100.00) | -100.50 | +1.50 (+1.00, +2.00) |" \
      in lines
  assert "| wn | 2 | 2 | -89.50 +- 1.50 (-88.00, -91.00) | -90.50 | +2.50 (+2.00, +3.00) |" \
      in lines
  assert "| wn | 1 | test_iwae_k8_n4 -89.00 |" in lines
  groups = plot_bound.group_by_parameterization(runs)
  assert [epoch for epoch, _ in groups["wn"][0]["subset"]] == [0.5, 1.0, 1.5, 2.0]


def test_the_paper_overlay_and_the_chosen_epochs(tmp_path):
  import pytest
  runs = [_write_run(tmp_path / "w0", "wn", 0, [-150.0, -130.0, -119.0], [-160, -150]),
          _write_run(tmp_path / "n0", "normal", 0, [-200.0, -190.0, -180.0], [-205, -200])]
  table = plot_bound.plot_bound(runs, str(tmp_path / "fig4.png"), paper="figure4",
                                table_epochs=[1, 3])
  assert (tmp_path / "fig4.png").stat().st_size > 0
  rows = [line for line in table.splitlines() if line.startswith(("| wn |", "| normal |"))
          and "test_iwae" not in line]
  assert [row.split("|")[2].strip() for row in rows] == ["1", "3", "1", "3"]
  assert plot_bound.PAPER_CURVES["figure4"]["wn"][1] == (10, -102.4)
  with pytest.raises(ValueError, match="paper must be one of"):
    plot_bound.plot_bound(runs, str(tmp_path / "x.png"), paper="figure9")


def test_ours_beside_the_paper_and_where_each_arm_passes_the_axes_bottom(tmp_path):
  wn = [-150.0, -125.0, -119.0, -110.0, -118.5]
  runs = [_write_run(tmp_path / "w0", "wn", 0, wn, [-160]),
          _write_run(tmp_path / "w1", "wn", 1, [v - 2 for v in wn], [-160]),
          _write_run(tmp_path / "n0", "normal", 0, [-200.0, -190.0], [-210])]
  groups = plot_bound.group_by_parameterization(runs)
  lines = plot_bound.paper_table(groups, "figure4", [1, 5, 10]).splitlines()
  assert lines[0] == ("| epoch | paper: wn | ours: wn (2 seeds) | paper: normal | "
                      "ours: normal (1 seed) |")
  assert lines[2] == "| 1 | below -120 | -151.00 | below -120 | -200.00 |"
  assert lines[3] == "| 5 | -118.0 | -119.50 | below -120 | not reached |"
  assert lines[4] == "| 10 | -102.4 | not reached | below -120 | not reached |"
  # The mean over the seeds: -120.0 at epoch 3 (not above -120), -111.0 at 4.
  assert "- wn: above -120 from epoch 4 (-111.00); the paper's from about epoch 5" in lines
  assert "- normal: not above -120 by epoch 2 (-190.00); the paper's from about epoch 37" in lines
