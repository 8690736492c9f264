"""The experiment launcher: which runs each experiment holds, filtering,
skipping finished runs, and one real launch through train.py."""

import json
import os

import pytest

from wn_jax.study import experiments


def test_experiments_hold_the_runs_the_claims_need():
  figure2 = experiments.EXPERIMENTS["figure2"]
  assert sorted((r.variant, r.seed) for r in figure2) == sorted(
      (p, s) for p in ("normal", "wn", "bn", "mobn", "wn_mobn") for s in (0, 1))
  assert all(r.lr == 1e-3 for r in figure2)
  lr_sweep = experiments.EXPERIMENTS["lr_sweep"]
  assert sorted((r.variant, r.lr) for r in lr_sweep) == sorted(
      (p, lr) for p in ("normal", "wn", "wn_mobn")
      for lr in (3e-4, 1e-3, 3e-3, 1e-2, 3e-2))
  names = [r.name for r in experiments.EXPERIMENTS["init_ablation"]]
  assert names == ["wn_lr0.001_s0", "wn_nodatainit_lr0.001_s0", "normal_lr0.001_s0"]


def _record_launches(monkeypatch, exit_code=0, programs=None):
  launched = []

  def fake_launch(group, root, extra_args, preset):
    assert preset == "quick"
    for run in group:
      launched.append((run.name, run.variant, run.lr, run.seed, root, tuple(extra_args)))
    if programs is not None:
      programs.append([run.name for run in group])
    return run.name, exit_code

  monkeypatch.setattr(experiments, "launch", fake_launch)
  return launched


def test_shared_runs_launch_once_and_the_filter_keeps_only_its_parameterizations(
    monkeypatch, tmp_path):
  launched = _record_launches(monkeypatch)
  assert experiments.main(["figure2", "lr_sweep", "--root", str(tmp_path),
                           "--parameterizations", "wn_mobn", "--", "--x=1"]) == 0
  assert sorted(r[0] for r in launched) == sorted(
      ["wn_mobn_lr0.001_s0", "wn_mobn_lr0.001_s1", "wn_mobn_lr0.0003_s0",
       "wn_mobn_lr0.003_s0", "wn_mobn_lr0.01_s0", "wn_mobn_lr0.03_s0"])
  assert all(r[4] == str(tmp_path) and r[5] == ("--x=1",) for r in launched)

  launched.clear()
  experiments.main(["init_ablation", "--root", str(tmp_path), "--parameterizations", "wn"])
  assert sorted(r[1] for r in launched) == ["wn", "wn,no_data_init"]


def test_runs_of_one_parameterization_share_programs_up_to_the_cap(monkeypatch, tmp_path):
  programs = []
  _record_launches(monkeypatch, programs=programs)
  _write_run(tmp_path / "sweeps" / "old" / "wn_lr0.001_s0", num_epochs=10, last_epoch=10)
  experiments.main(["lr_sweep", "init_ablation", "--root", str(tmp_path),
                    "--max-members", "3"])
  # wn_lr0.001_s0 finished inside an earlier sweep's folder: not launched again.
  assert sorted(programs) == sorted([
      ["normal_lr0.0003_s0", "normal_lr0.001_s0", "normal_lr0.003_s0"],
      ["normal_lr0.01_s0", "normal_lr0.03_s0"],
      ["wn_lr0.0003_s0", "wn_lr0.003_s0", "wn_lr0.01_s0"], ["wn_lr0.03_s0"],
      ["wn_mobn_lr0.0003_s0", "wn_mobn_lr0.001_s0", "wn_mobn_lr0.003_s0"],
      ["wn_mobn_lr0.01_s0", "wn_mobn_lr0.03_s0"],
      ["wn_nodatainit_lr0.001_s0"]])


def test_seeds_replace_each_runs_own_seed(monkeypatch, tmp_path):
  launched = _record_launches(monkeypatch)
  experiments.main(["figure2", "init_ablation", "--root", str(tmp_path), "--seeds", "2", "3",
                    "--parameterizations", "wn", "normal", "--max-members", "1"])
  assert sorted(r[0] for r in launched) == [
      "normal_lr0.001_s2", "normal_lr0.001_s3", "wn_lr0.001_s2", "wn_lr0.001_s3",
      "wn_nodatainit_lr0.001_s2", "wn_nodatainit_lr0.001_s3"]
  assert sorted(r[3] for r in launched) == [2, 2, 2, 3, 3, 3]


def test_unknown_parameterization_is_an_error_that_lists_the_valid_ones(
    monkeypatch, tmp_path, capsys):
  launched = _record_launches(monkeypatch)
  with pytest.raises(SystemExit) as error:
    experiments.main(["lr_sweep", "--root", str(tmp_path), "--parameterizations", "bn"])
  assert error.value.code == 2 and not launched
  assert "['normal', 'wn', 'wn_mobn']" in capsys.readouterr().err


def test_a_failed_run_makes_the_launcher_fail(monkeypatch, tmp_path):
  _record_launches(monkeypatch, exit_code=1)
  assert experiments.main(["init_ablation", "--root", str(tmp_path)]) == 1


def _write_run(workdir, num_epochs, last_epoch):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"num_epochs": num_epochs}, f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for epoch in range(1, last_epoch + 1):
      f.write(json.dumps({"epoch": epoch, "test_error": 0.5}) + "\n")


def test_finished_means_the_last_epoch_is_logged(tmp_path):
  assert not experiments.finished(str(tmp_path / "missing"))
  _write_run(tmp_path / "half", num_epochs=4, last_epoch=2)
  assert not experiments.finished(str(tmp_path / "half"))
  _write_run(tmp_path / "done", num_epochs=4, last_epoch=4)
  assert experiments.finished(str(tmp_path / "done"))


def test_a_finished_run_is_not_launched_again(monkeypatch, tmp_path):
  _write_run(tmp_path / "wn_lr0.001_s0", num_epochs=10, last_epoch=10)
  _write_run(tmp_path / "wn_nodatainit_lr0.001_s0", num_epochs=10, last_epoch=9)
  launched = _record_launches(monkeypatch)
  assert experiments.main(["init_ablation", "--root", str(tmp_path),
                           "--parameterizations", "wn"]) == 0
  assert [r[0] for r in launched] == ["wn_nodatainit_lr0.001_s0"]  # unfinished: resumed
  assert experiments.record_dir(str(tmp_path), experiments.Run("wn", 1e-3, 0)) == str(
      tmp_path / "wn_lr0.001_s0")


@pytest.mark.slow  # end-to-end CLI runs
def test_launch_trains_the_named_variant_with_its_lr_and_seed(tmp_path, image_folder):
  shrink = ["--config.data.source=folder", f"--config.data.folder={image_folder}",
            "--config.model.width=4", "--config.num_epochs=1",
            "--config.optimizer.anneal_start_epoch=1", "--config.batch_size=10",
            "--config.init_batch_size=20", "--config.eval_batch_size=8"]
  run = experiments.Run("wn", 3e-3, 2, data_init=False)
  assert (run.name, run.variant) == ("wn_nodatainit_lr0.003_s2", "wn,no_data_init")
  name, code = experiments.launch([run], str(tmp_path), shrink)
  workdir = tmp_path / name
  assert code == 0, (workdir / "train.log").read_text()[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["parameterization"] == "wn"
  assert config["model"]["data_init"] is False
  assert config["optimizer"]["learning_rate"] == 3e-3 and config["seed"] == 2
  assert experiments.finished(str(workdir))

  # Two runs: one sweep program, each run's records in its own folder.
  group = [experiments.Run("wn", 1e-3, 0), experiments.Run("wn", 3e-3, 1)]
  _, code = experiments.launch(group, str(tmp_path), shrink)
  (sweep_dir,) = (tmp_path / "sweeps").iterdir()
  assert code == 0, (sweep_dir / "train.log").read_text()[-3000:]
  for run in group:
    assert experiments.record_dir(str(tmp_path), run) == str(sweep_dir / run.name)
    config = json.loads((sweep_dir / run.name / "config.json").read_text())
    assert (config["optimizer"]["learning_rate"], config["seed"]) == (run.lr, run.seed)
