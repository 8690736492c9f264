"""wn_jax.study.plot_returns: the Figure 5 style plot and the best/last table, from records."""

import json

import pytest

from wn_jax.study import plot_returns


def _write_run(folder, parameterization, lr, seed, returns):
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(
      {"seed": seed, "model": {"parameterization": parameterization},
       "optimizer": {"learning_rate": lr}, "dqn": {"env_steps_per_epoch": 1000}}))
  lines = [{"step": 10 * (e + 1), "epoch": e + 1, "test_return": v, "test_length": 5.0}
           for e, v in enumerate(returns)]
  lines.insert(1, {"step": 5, "train_loss": 0.1})
  (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
  return str(folder)


def test_the_table_gives_best_and_last_per_group_and_the_figure_is_written(tmp_path):
  runs = [_write_run(tmp_path / "n0", "normal", 1e-4, 0, [1.0, 5.0, 3.0]),
          _write_run(tmp_path / "n1", "normal", 1e-4, 1, [2.0, 4.0, 6.0, 9.0]),
          _write_run(tmp_path / "w0", "wn", 3e-4, 0, [4.0, 8.0, 2.0]),
          _write_run(tmp_path / "m0", "normal", 3e-4, 0, [1.0, 1.0, 1.0])]
  table = plot_returns.plot_returns(runs, str(tmp_path / "returns.png"))
  assert (tmp_path / "returns.png").stat().st_size > 0
  lines = table.splitlines()
  # Cut to 3 epochs: best per seed 5 and 6 (mean 5.5, s.e. 0.5); last 3 and 6.
  assert ("| normal, lr 0.0001 | 2 | 3 (3,000) | 5.5 +- 0.5 (5.0, 6.0) | 4.5 +- 1.5 (3.0, 6.0) |"
          in lines)
  assert "| wn, lr 0.0003 | 1 | 3 (3,000) | 8.0 +- 0.0 (8.0) | 2.0 +- 0.0 (2.0) |" in lines
  assert len(lines) == 5  # the header, its rule and three groups (the lr tells them apart)
  cut = plot_returns.plot_returns(runs, str(tmp_path / "cut.png"), max_epoch=2).splitlines()
  assert "| normal, lr 0.0001 | 2 | 2 (2,000) | 4.5 +- 0.5 (5.0, 4.0) | 4.5 +- 0.5 (5.0, 4.0) |" \
      in cut


def test_a_run_without_an_evaluated_epoch_is_refused(tmp_path):
  folder = tmp_path / "empty"
  folder.mkdir()
  (folder / "config.json").write_text("{}")
  (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": 0.1}) + "\n")
  with pytest.raises(ValueError, match="no evaluated epoch"):
    plot_returns.read_return_run(str(folder))
