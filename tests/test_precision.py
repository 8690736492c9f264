"""config.matmul_precision reaches every conv and matmul the run traces."""

import jax
import jax.numpy as jnp
import pytest
from conftest import tiny_config

from wn_jax.trainer import config_checks, train


@pytest.mark.parametrize("precision", ["default", "highest"])
def test_the_run_is_traced_under_the_configured_precision(precision, image_folder,
                                                          tmp_path, monkeypatch):
  seen = {}

  def record(config, workdir):
    x = jnp.ones((2, 2))
    seen["hlo"] = jax.jit(jnp.dot).lower(x, x).as_text()

  monkeypatch.setattr(train, "_train_and_evaluate", record)
  config = tiny_config(image_folder)
  config.matmul_precision = precision
  train.train_and_evaluate(config, str(tmp_path))
  assert ("HIGHEST" in seen["hlo"]) == (precision == "highest")


def test_unknown_precision_is_refused(image_folder):
  config = tiny_config(image_folder)
  config.matmul_precision = "float64"
  with pytest.raises(ValueError, match=r"matmul_precision must be one of \('default', "
                                       r"'high', 'highest'\), got 'float64'"):
    config_checks.validate_config(config, num_devices=1)
