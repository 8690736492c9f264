"""The analysis scripts read what training wrote."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config

from configs import cifar
from wn_jax.trainer import record_files, train

ANALYSIS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "analysis")


def _load_script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ANALYSIS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow  # trains, then runs the analysis script end to end
def test_trained_predictions_restores_the_run_and_reproduces_its_test_error(
    image_folder, tmp_path, capsys, monkeypatch):
  trained_predictions = _load_script("trained_predictions")
  workdir = str(tmp_path / "trained")
  config = tiny_config(image_folder, "wn_mobn")  # running means: model_state matters
  state = train.train_and_evaluate(config, workdir)

  step, variables = trained_predictions.restore_variables(workdir)
  assert step == int(state.step)
  for restored, trained in zip(jax.tree.leaves(variables),
                               jax.tree.leaves({"params": state.params, **state.model_state})):
    np.testing.assert_array_equal(restored, trained)

  recorded = [r for r in record_files.read_records(workdir) if "test_error" in r][-1][
      "test_error"]
  monkeypatch.setattr("sys.argv", ["trained_predictions.py", workdir, "--num", "12"])
  trained_predictions.main()  # 12 = the whole test set of the tiny folder
  row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| trained |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1] == str(step)
  assert float(cells[2].rstrip("%")) == round(100 * recorded, 2)


def test_trained_predictions_names_the_keys_an_old_config_lacks(tmp_path):
  trained_predictions = _load_script("trained_predictions")
  saved = json.loads(cifar.get_config("wn").to_json())
  del saved["model"]["init_order"]  # a key added after the run was trained
  with open(tmp_path / "config.json", "w") as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match=r"lacks keys of the current config \(model.init_order\)"):
    trained_predictions.read_config(str(tmp_path))
  saved["model"]["init_order"] = "sequential"
  with open(tmp_path / "config.json", "w") as f:
    json.dump(saved, f)
  assert trained_predictions.read_config(str(tmp_path)).model.init_order == "sequential"
