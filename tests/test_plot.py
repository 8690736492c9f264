"""The plotting CLI draws each kind from saved workdirs."""

import json
import os

import pytest

from configs import cifar
from wn_jax.study import plot


def _fake_workdir(root, parameterization, lr, seed, final_error):
  config = cifar.get_config(parameterization)
  config.optimizer.learning_rate = lr
  config.seed = seed
  os.makedirs(root)
  with open(os.path.join(root, "config.json"), "w") as f:
    f.write(config.to_json())
  with open(os.path.join(root, "metrics.jsonl"), "w") as f:
    for step in (0, 50, 100):
      f.write(json.dumps({"step": step, "NormalizedConv_0/v_norm": 1.0 + step / 100,
                          "NormalizedConv_0/g_over_v_norm": 1.0 / (1 + step / 100)}) + "\n")
    for epoch, error in ((1, 0.6), (2, final_error)):
      f.write(json.dumps({"step": 100 * epoch, "epoch": epoch, "train_error": error + 0.1,
                          "train_loss": 1.0, "test_error": error, "test_loss": 1.0}) + "\n")
  return str(root)


@pytest.mark.slow  # 2 s on the 2-core CPU
def test_every_plot_kind_writes_a_png(tmp_path, capsys):
  runs = [_fake_workdir(tmp_path / f"r{i}", p, lr, seed, err)
          for i, (p, lr, seed, err) in enumerate([
              ("wn", 1e-3, 0, 0.30), ("wn", 1e-3, 1, 0.34), ("wn", 3e-3, 0, 0.28),
              ("normal", 1e-3, 0, 0.40)])]
  for kind in ("curves", "curves_mean", "norms", "lr_sweep"):
    out = str(tmp_path / f"{kind}.png")
    plot.main(["--kind", kind, *runs, "-o", out])
    assert os.path.getsize(out) > 10_000
  printed = capsys.readouterr().out
  # Norms: 1 -> 2 (x2) and 1 -> 1/2 from the init, 1.5 -> 2.0 (x1.33) and
  # 1/1.5 -> 1/2 (x0.75) from step 50 to 100.
  assert ("wn lr 0.001: steps 0 -> 100: mean ||v|| x2.00, mean g/||v|| x0.50 "
          "(steps 50 -> 100: mean ||v|| x1.33, mean g/||v|| x0.75)") in printed
  assert "| wn | 30.00% / 34.00% | 28.00% |" in printed
  assert "| normal | 40.00% | - |" in printed
  table = plot.lr_sweep_table(runs)
  assert table == {"wn": {1e-3: [0.30, 0.34], 3e-3: [0.28]}, "normal": {1e-3: [0.40]}}


def test_missing_metrics_names_the_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match="is .* a training workdir"):
    plot.read_run(str(tmp_path))


def test_curves_mean_averages_the_runs_of_each_parameterization(tmp_path, capsys):
  runs = [_fake_workdir(tmp_path / f"r{i}", p, 1e-3, seed, err)
          for i, (p, seed, err) in enumerate([("wn", 0, 0.30), ("wn", 1, 0.34),
                                               ("normal", 0, 0.40)])]
  assert {k: len(v) for k, v in plot.group_runs(runs).items()} == {"wn": 2, "normal": 1}
  plot.main(["--kind", "curves_mean", *runs, "-o", str(tmp_path / "mean.png")])
  printed = capsys.readouterr().out
  # Training errors 0.7 (epoch 1), 0.40 and 0.44 (epoch 2); test 0.30, 0.34.
  assert ("| wn | 2 | 70.00% (70.00..70.00) | 42.00% (40.00..44.00) | "
          "32.00% (30.00..34.00) | 30.00, 34.00 (epoch 2) |") in printed
  assert "| normal | 1 | 70.00% | 50.00% | 40.00% | 40.00 (epoch 2) |" in printed


def test_run_label_names_the_init_order():
  config = json.loads(cifar.get_config("wn").to_json())
  assert plot.run_label(config, with_seed=False) == "wn"
  config["model"]["init_order"] = "independent"
  assert plot.run_label(config, with_seed=True) == "wn (independent init) seed 0"
  del config["model"]["init_order"]  # records written before the key existed
  assert plot.run_label(config, with_seed=False) == "wn"


def test_the_arm_label_names_the_reading_of_normal_and_the_g_start():
  from configs import mnist_draw, mnist_vae
  label = lambda arg: plot.arm_label(json.loads(mnist_vae.get_config(arg).to_json()))  # noqa: E731
  assert (label("normal"), label("normal,direct"), label("wn,direct")) == (
      "normal", "normal (w direct)", "wn")
  label = lambda arg: plot.arm_label(json.loads(mnist_draw.get_config(arg).to_json()))  # noqa: E731
  assert (label("wn"), label("wn,g_norm"), label("normal")) == ("wn", "wn (g = ‖v‖)", "normal")


def test_a_diverged_run_puts_the_loss_panel_on_a_log_axis(tmp_path, monkeypatch):
  figures = []
  monkeypatch.setattr(plot.figures, "save_figure", lambda fig, output, title: figures.append(fig))
  healthy = _fake_workdir(tmp_path / "healthy", "wn", 1e-3, 0, 0.30)
  plot.main(["--kind", "curves", healthy, "-o", str(tmp_path / "a.png")])
  diverged = _fake_workdir(tmp_path / "diverged", "wn", 1e-3, 1, 0.90)
  metrics = os.path.join(diverged, "metrics.jsonl")
  with open(metrics) as f:
    records = f.read().replace('"train_loss": 1.0', '"train_loss": 2.4e14')
  with open(metrics, "w") as f:
    f.write(records)
  for kind in ("curves", "curves_mean"):
    plot.main(["--kind", kind, healthy, diverged, "-o", str(tmp_path / "b.png")])
  loss_scales = [fig.axes[0].get_yscale() for fig in figures]
  error_scales = {ax.get_yscale() for fig in figures for ax in fig.axes[1:]}
  assert loss_scales == ["linear", "log", "log"]
  assert error_scales == {"linear"}
  assert plot.loss_axis_scale([1.0, float("nan"), 2.0]) == "linear"
  assert plot.loss_axis_scale([0.0, 1e9]) == "linear"


def test_runs_on_different_data_are_grouped_and_labelled_by_their_data(tmp_path, capsys):
  runs = []
  for i, (source, folder, seed, err) in enumerate([
      ("cifar10_python", "/d/cifar-10-python.tar.xz", 0, 0.30),
      ("cifar10_python", "/d/cifar-10-python.tar.xz", 1, 0.32),
      ("folder", "/d/cifar10-jpeg/", 0, 0.40)]):
    run = _fake_workdir(tmp_path / f"r{i}", "wn", 1e-3, seed, err)
    with open(os.path.join(run, "config.json")) as f:
      config = json.load(f)
    config["data"].update(source=source, folder=folder, train_subset=2000)
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump(config, f)
    runs.append(run)
  groups = plot.group_runs(runs)
  assert {k: len(v) for k, v in groups.items()} == {
    "wn [original, 2000 training images]": 2, "wn [cifar10-jpeg, 2000 training images]": 1}
  assert plot.group_runs(runs[:2]).keys() == {"wn"}  # Same data: not named.
  plot.main(["--kind", "curves_mean", *runs, "-o", str(tmp_path / "mean.png")])
  printed = capsys.readouterr().out
  assert "| wn [cifar10-jpeg, 2000 training images] | 1 |" in printed
  # Test losses 1.0, 1.0 in every fake run: lowest at epoch 1, no rise.
  assert ("| wn [original, 2000 training images] | 2 | 1.000 (1.000..1.000) | 1, 1 | "
          "1.000 (1.000..1.000) | 0.000 (0.000..0.000) |") in printed


def test_test_loss_table_finds_the_lowest_loss_and_its_rise():
  runs = [[{"epoch": e, "test_loss": loss} for e, loss in zip((5, 10, 15), losses)]
          for losses in ((2.0, 1.0, 1.5), (2.0, 1.2, 1.8))]
  table = plot.test_loss_table({"wn": runs}, {"wn": 3})
  assert "| wn | 2 | 1.100 (1.000..1.200) | 10, 10 | 1.650 (1.500..1.800) | 0.550 (0.500..0.600) |" \
    in table
