"""scripts/reproduce_gpu.sh: run names become the right overrides."""

import json
import os
import subprocess
import sys
import tarfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "reproduce_gpu.sh")
TINY = ("--config.model.width=4 --config.num_epochs=2 --config.optimizer.anneal_start_epoch=1 "
        "--config.batch_size=10 --config.init_batch_size=20 --config.eval_batch_size=12")


def _run_script(out, runs, data_folder, work, budget_s=300):
  env = dict(os.environ, DATA_DIR=str(data_folder), WORK_DIR=str(work),
             BUDGET_S=str(budget_s), EXTRA_ARGS=TINY,
             # The script calls `python3`: make it this interpreter.
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  return subprocess.run(["bash", SCRIPT, str(out), *runs], env=env, capture_output=True,
                        text=True, timeout=600, cwd=REPO_ROOT)


@pytest.mark.parametrize("runs, message", [
    (["wn_lr0.001"], "unknown run 'wn_lr0.001'"),
    (["wn_lr0.001_s0_zca"], "unknown run"),
    (["layernorm_lr0.001_s0"], "unknown run"),
    (["bench", "wn_lr0.001_s0"], "bench runs alone"),
    ([], "usage"),
])
def test_bad_run_names_are_refused_before_anything_starts(runs, message, tmp_path):
  result = _run_script(tmp_path / "out", runs, tmp_path / "no_data", tmp_path / "work")
  assert result.returncode == 2
  assert message in result.stderr
  assert not (tmp_path / "work").exists()


@pytest.mark.slow  # end-to-end script run
def test_a_named_run_trains_with_the_overrides_its_name_spells(image_folder, tmp_path):
  name = "wn_mobn_lr3e-4_s1_zca1e-2"
  result = _run_script(tmp_path / "out", [name], image_folder, tmp_path / "work")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{name}: finished" in result.stdout
  with tarfile.open(tmp_path / "out" / f"records_{name}.tgz") as records:
    config = json.load(records.extractfile(f"./{name}/config.json"))
    metrics = records.extractfile(f"./{name}/metrics.jsonl").read().decode()
  assert config["model"]["parameterization"] == "wn_mobn"
  assert config["optimizer"]["learning_rate"] == 3e-4
  assert config["seed"] == 1
  assert config["data"]["zca_regularization"] == 1e-2
  assert config["data"]["folder"] == str(image_folder)
  assert config["num_epochs"] == 2 and config["model"]["width"] == 4  # EXTRA_ARGS
  assert [json.loads(line)["epoch"] for line in metrics.splitlines()
          if "test_error" in line] == [1, 2]
  assert (tmp_path / "out" / f"logs_{name}.tgz").exists()
