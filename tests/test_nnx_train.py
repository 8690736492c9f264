"""config.model.api='nnx': the CIFAR run through the NNX modules, same loop."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config

from wn_jax import config_checks, train


def _records(directory):
  with open(os.path.join(directory, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _assert_records_close(a, b, rtol=1e-5, atol=1e-5):
  assert [sorted(r) for r in a] == [sorted(r) for r in b]
  for ra, rb in zip(a, b):
    for key, value in ra.items():
      timing = key.endswith("_s") or "per_s" in key  # wall times differ
      if isinstance(value, (int, float)) and not timing:
        np.testing.assert_allclose(rb[key], value, rtol=rtol, atol=atol, err_msg=key)


def _quick_epoch(image_folder, api, variant="wn_mobn"):
  """One epoch of the quick preset (width 16) on the 60-image folder."""
  config = tiny_config(image_folder, f"{variant},quick")
  config.model.width = 16
  config.num_epochs = 1
  config.optimizer.anneal_start_epoch = 1
  config.model.api = api
  return config


@pytest.mark.slow
def test_nnx_run_gives_the_records_of_the_linen_run(image_folder, tmp_path):
  states = {}
  for api in ("linen", "nnx"):
    states[api] = train.train_and_evaluate(_quick_epoch(image_folder, api),
                                           str(tmp_path / api))
  records = {api: _records(tmp_path / api) for api in states}
  assert any("test_error" in r for r in records["nnx"])
  _assert_records_close(records["linen"], records["nnx"])
  # The same state layout, so a checkpoint of one API resumes on the other.
  assert jax.tree.structure(states["linen"]) == jax.tree.structure(states["nnx"])
  for a, b in zip(jax.tree.leaves(states["linen"]), jax.tree.leaves(states["nnx"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_unknown_api_fails_clearly(image_folder):
  config = tiny_config(image_folder, "wn")
  config.model.api = "haiku"
  with pytest.raises(ValueError, match="config.model.api must be one of"):
    config_checks.validate_config(config, 1)
