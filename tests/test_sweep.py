"""Sweeps: many members in one program equal the runs trained alone."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, make_image_folder, tiny_config

from wn_jax import config_checks, sweep, train


def _one_epoch(config):
  config.num_epochs = 1
  config.optimizer.anneal_start_epoch = 1
  return config


def _member(state, k):
  return jax.tree.map(lambda x: np.asarray(x)[k], state)


def _assert_trees_close(a, b, atol, rtol=0):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


_ALONE = {}  # (parameterization, seed, lr, init_scale, data_init) -> (state, workdir)


def _alone(image_folder, tmp_path_factory, parameterization, seed=0, learning_rate=1e-3,
           init_scale=1.0, data_init=True):
  """The one-epoch tiny run with these values, trained alone (once per session)."""
  key = (image_folder, parameterization, seed, learning_rate, init_scale, data_init)
  if key not in _ALONE:
    config = _one_epoch(tiny_config(image_folder, parameterization))
    config.seed, config.optimizer.learning_rate = seed, learning_rate
    config.model.init_scale, config.model.data_init = init_scale, data_init
    workdir = str(tmp_path_factory.mktemp("alone"))
    _ALONE[key] = train.train_and_evaluate(config, workdir), workdir
  return _ALONE[key]


def _records(directory):
  with open(os.path.join(directory, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# bn amplifies rounding (reduction order differs under vmap): measured 1.6e-5
# relative on one of 144 kernel entries after 6 steps; wn, wn_mobn meet 1e-5.
@pytest.mark.slow  # a sweep and each member alone
@pytest.mark.parametrize("parameterization, rtol, member_loop", [
    ("wn", 0, "vmap"), ("wn", 0, "unroll"), ("bn", 5e-5, "vmap"), ("wn_mobn", 0, "vmap")])
def test_a_member_equals_the_run_trained_alone(parameterization, rtol, member_loop,
                                               image_folder, tmp_path, tmp_path_factory):
  config = _one_epoch(tiny_config(image_folder, parameterization))
  config.sweep.member_loop = member_loop
  config.sweep.seed = (0, 1)
  config.sweep.learning_rate = (1e-3, 3e-3)
  config.sweep.init_scale = (1.0, 0.5)
  swept = train.train_and_evaluate(config, str(tmp_path / "sweep"))
  assert np.asarray(swept.step).tolist() == [6, 6]

  reference, alone_dir = _alone(image_folder, tmp_path_factory, parameterization,
                                seed=1, learning_rate=3e-3, init_scale=0.5)
  _assert_trees_close(_member(swept, 1), reference, atol=1e-5, rtol=rtol)
  # Member 0 differs from member 1: the comparison is not vacuous.
  assert not np.allclose(jax.tree.leaves(_member(swept, 0).params)[0],
                         jax.tree.leaves(reference.params)[0])

  # Each member's records sit in its own folder, named as the launcher names
  # runs, with its effective config and the same records as the run alone.
  name = f"{parameterization}_lr0.003_s1_is0.5"
  assert sorted(os.listdir(tmp_path / "sweep")) == sorted(
      ["checkpoints", "config.json", f"{parameterization}_lr0.001_s0", name])
  member_dir = tmp_path / "sweep" / name
  with open(member_dir / "config.json") as f:
    member_config = json.load(f)
  with open(os.path.join(alone_dir, "config.json")) as f:
    alone_config = json.load(f)
  # How the sweep looped over its members is the sweep's, not the member's.
  assert member_config["sweep"].pop("member_loop") == member_loop
  alone_config["sweep"].pop("member_loop")
  assert member_config == alone_config
  member_records, alone_records = _records(member_dir), _records(alone_dir)
  assert [sorted(r) for r in member_records] == [sorted(r) for r in alone_records]
  for a, b in zip(member_records, alone_records):
    for key in ("train_loss", "train_error", "test_loss", "test_error"):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # two training runs
def test_a_sweep_of_one_equals_the_plain_run(image_folder, tmp_path, tmp_path_factory):
  config = _one_epoch(tiny_config(image_folder, "wn"))
  config.sweep.seed = (0,)
  swept = train.train_and_evaluate(config, str(tmp_path / "sweep"))
  plain, _ = _alone(image_folder, tmp_path_factory, "wn")
  _assert_trees_close(_member(swept, 0), plain, atol=0)
  assert os.path.exists(tmp_path / "sweep" / "wn_lr0.001_s0" / "metrics.jsonl")


@pytest.mark.slow  # training runs
def test_members_may_differ_in_data_init(image_folder, tmp_path, tmp_path_factory):
  config = _one_epoch(tiny_config(image_folder, "wn"))
  config.sweep.data_init = (True, False)
  swept = train.train_and_evaluate(config, str(tmp_path / "sweep"))
  _assert_trees_close(_member(swept, 0), _alone(image_folder, tmp_path_factory, "wn")[0],
                      atol=1e-5)
  reference, _ = _alone(image_folder, tmp_path_factory, "wn", data_init=False)
  _assert_trees_close(_member(swept, 1), reference, atol=1e-5)

  mixed = _one_epoch(tiny_config(image_folder, "normal"))
  mixed.sweep.data_init = (True, False)
  with pytest.raises(ValueError, match="cannot mix data_init=True and False for "
                                       "parameterization 'normal'"):
    train.train_and_evaluate(mixed, str(tmp_path / "normal"))


@pytest.mark.slow  # three training runs
def test_resumed_sweep_equals_uninterrupted(image_folder, tmp_path):
  config = tiny_config(image_folder, "wn_mobn")
  config.sweep.learning_rate = (1e-3, 2e-3)
  config.ema_decay = 0.9  # The parameters' moving average resumes too.
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))
  first = _one_epoch(tiny_config(image_folder, "wn_mobn"))  # killed after epoch 1
  first.sweep.learning_rate = (1e-3, 2e-3)
  first.ema_decay = 0.9
  train.train_and_evaluate(first, str(tmp_path / "b"))
  # The user restarts with the full schedule (only num_epochs grew).
  os.remove(tmp_path / "b" / "config.json")
  resumed = train.train_and_evaluate(config, str(tmp_path / "b"))
  _assert_trees_close(resumed, uninterrupted, atol=0)
  for name in ("wn_mobn_lr0.001_s0", "wn_mobn_lr0.002_s0"):
    assert ([r["step"] for r in _records(tmp_path / "b" / name)] ==
            [r["step"] for r in _records(tmp_path / "a" / name)])


@pytest.mark.slow  # a whole training run
def test_a_diverging_member_is_stopped_and_the_others_train_on(image_folder, tmp_path,
                                                               tmp_path_factory):
  config = _one_epoch(tiny_config(image_folder, "normal"))
  config.sweep.learning_rate = (1e-3, 1e12)
  swept = train.train_and_evaluate(config, str(tmp_path / "sweep"))
  stopped = _records(tmp_path / "sweep" / "normal_lr1e+12_s0")
  events = [r for r in stopped if "stopped" in r]
  assert len(events) == 1 and not np.isfinite(events[0]["nonfinite_loss"])
  assert int(np.asarray(swept.nonfinite_step)[1]) == events[0]["step"] >= 0
  assert not any("test_error" in r for r in stopped)  # No epoch finished.
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(swept.params))
  # The healthy member is exactly the run trained alone.
  alone, _ = _alone(image_folder, tmp_path_factory, "normal")
  assert int(np.asarray(swept.nonfinite_step)[0]) == -1
  _assert_trees_close(_member(swept, 0).params, alone.params, atol=1e-6)


@pytest.mark.parametrize("key, value, message", [
    ("learning_rate", (1e-3, -1.0), r"sweep.learning_rate must hold positive numbers"),
    ("seed", (0, 1.5), r"sweep.seed must hold integers"),
    ("data_init", (1, 0), r"sweep.data_init must hold True/False"),
])
def test_bad_sweep_values_fail_clearly(key, value, message, image_folder):
  config = tiny_config(image_folder)
  config.sweep[key] = value
  with pytest.raises(ValueError, match=message):
    config_checks.validate_config(config, num_devices=1)


def test_sweep_lists_of_different_lengths_or_twins_fail(image_folder):
  config = tiny_config(image_folder)
  config.sweep.seed = (0, 1, 2)
  config.sweep.learning_rate = (1e-3, 3e-3)
  with pytest.raises(ValueError, match=r"sweep.seed has 3, config.sweep.learning_rate "
                                       r"has 2 values.*same length"):
    config_checks.validate_config(config, num_devices=1)
  config.sweep.seed, config.sweep.learning_rate = (0, 0), ()
  with pytest.raises(ValueError, match=r"identical members \['wn_lr0.001_s0'\]"):
    config_checks.validate_config(config, num_devices=1)


def test_member_names_match_the_launcher():
  assert sweep.run_name("wn", 1e-3, 0) == "wn_lr0.001_s0"
  assert sweep.run_name("wn", 3e-4, 2, data_init=False) == "wn_nodatainit_lr0.0003_s2"
  assert sweep.run_name("bn", 1e-2, 1, init_scale=0.5) == "bn_lr0.01_s1_is0.5"


# Trains a sweep on 8 forced host devices: members replicated, batch sharded.
_DRIVER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, ml_collections
    sys.path.insert(0, {repo!r})
    from wn_jax import train
    assert jax.device_count() == 8
    config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
    state = train.train_and_evaluate(config, sys.argv[2])
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    np.savez(sys.argv[3], **{{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}})
""").format(repo=REPO_ROOT)


@pytest.mark.slow  # 8 devices, in a subprocess
def test_members_by_data_mesh_on_eight_devices_matches_one_device(tmp_path_factory, tmp_path):
  # Unclipped: no max-pool ties, whose winner depends on rounding (see test_scaling).
  folder = make_image_folder(tmp_path_factory.mktemp("unclipped") / "images",
                             unclipped=True)
  config = _one_epoch(tiny_config(folder, "wn_mobn"))
  config.batch_size = 8
  config.init_batch_size = 16
  config.eval_batch_size = 8
  config.sweep.seed = (0, 1)
  config.sweep.learning_rate = (1e-3, 3e-3)
  one_device = train.train_and_evaluate(config, str(tmp_path / "one"))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-c", _DRIVER, config.to_json(), str(tmp_path / "eight"),
       str(tmp_path / "p.npz")], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = np.load(tmp_path / "p.npz")
  for path, leaf in jax.tree_util.tree_leaves_with_path(one_device.params):
    np.testing.assert_allclose(saved[jax.tree_util.keystr(path)], np.asarray(leaf),
                               atol=1e-5, rtol=0)
