"""DQN (section 5.4): the TD loss, the replay, the target network's period, the
data-dependent init on replay states, batch norm's modes, and a MinAtar run
through the one loop that resumes to the uninterrupted result."""

import importlib.util
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_records

from configs import minatar_dqn
from wn_jax.data import replay as replay_lib
from wn_jax.models.dqn import QNetwork
from wn_jax.tasks import dqn
from wn_jax.trainer import config_checks, placement, program, steps, train

# The environment's tests need the rl extra (gymnax), which caps jax below
# 0.12; `pip install -e '.[test,rl]'` (README) installs it, and CI runs them.
needs_gymnax = pytest.mark.skipif(importlib.util.find_spec("gymnax") is None,
                                  reason="needs the rl extra: pip install -e '.[test,rl]'")


def tiny_dqn_config(variant="wn"):
  config = minatar_dqn.get_config(f"{variant},breakout")
  config.env.max_steps_in_episode = 50
  config.dqn.replay_capacity = 300
  config.dqn.replay_start = 50
  config.dqn.init_states = 20
  config.dqn.env_steps_per_epoch = 40  # 10 updates an epoch
  config.dqn.target_period_updates = 3
  config.dqn.epsilon_decay_env_steps = 100
  config.dqn.test_episodes = 2
  config.eval_batch_size = 2
  config.batch_size = 8
  config.num_epochs = 2
  config.log_every_steps = 5
  config.log_norms_every_steps = 10
  return config


# ---------------------------------------------------------------------------
# The loss.


def test_td_error_and_huber_loss_against_a_hand_computed_case():
  q_tm1 = jnp.array([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
  q_t = jnp.array([[1.0, 4.0, -2.0], [0.0, 0.0, 10.0]])
  action = jnp.array([1, 2])
  reward = jnp.array([1.0, -1.0])
  discount = jnp.array([0.9, 0.0])  # the second transition terminated
  td = dqn.q_learning_td_error(q_tm1, action, reward, discount, q_t)
  # 1 + 0.9 * 4 - 2 = 2.6; -1 + 0 - 3 = -4.
  np.testing.assert_allclose(td, [2.6, -4.0], rtol=1e-6)
  config = tiny_dqn_config()
  transitions = replay_lib.Transition(None, action, reward, discount / 0.99, None)
  loss = dqn.td_loss(config, q_tm1, transitions, q_t)
  # Huber(delta 1): |x| - 0.5 beyond 1: (2.6 - 0.5 + 4 - 0.5) / 2 = 2.8.
  assert float(loss) == pytest.approx(2.8, rel=1e-6)
  small = dqn.td_loss(config, q_tm1, transitions._replace(reward=jnp.array([-1.3, 2.5])), q_t)
  # TD errors 0.3 and -0.5: quadratic, (0.045 + 0.125) / 2.
  assert float(small) == pytest.approx(0.085, rel=1e-5)
  # No gradient into the target network's values.
  grad_t = jax.grad(lambda q: dqn.td_loss(config, q_tm1, transitions, q))(q_t)
  assert not np.any(grad_t)


def test_epsilon_decays_linearly_after_the_replay_start_and_then_stays():
  config = tiny_dqn_config()  # 1 -> 0.1 over 100 env steps
  values = [float(dqn.epsilon(config, jnp.asarray(s))) for s in (0, 50, 100, 500)]
  np.testing.assert_allclose(values, [1.0, 0.55, 0.1, 0.1], rtol=1e-6)


# ---------------------------------------------------------------------------
# The replay.


def _transition(i, shape=(3, 3, 2)):
  obs = (np.arange(np.prod(shape)).reshape(shape) + i) % 3 == 0
  return replay_lib.Transition(jnp.asarray(obs, jnp.float32), jnp.int32(i % 4),
                               jnp.float32(i), jnp.float32(1.0),
                               jnp.asarray(~obs, jnp.float32))


@pytest.mark.parametrize("packed", [True, False])
def test_replay_stores_transitions_in_a_ring_and_gives_them_back(packed):
  shape = (3, 3, 2)
  replay = replay_lib.create(5, shape, packed=packed)
  assert replay.observations.shape == ((5, 3) if packed else (5, *shape))
  add = jax.jit(lambda r, t: replay_lib.add(r, t, shape))
  for i in range(7):  # 7 writes into 5 rows: rows 0 and 1 overwritten by 5 and 6
    replay = add(replay, _transition(i))
  assert int(replay.size) == 5 and int(replay.position) == 2
  got = replay_lib.gather(replay, jnp.arange(5), shape)
  np.testing.assert_array_equal(got.reward, [5, 6, 2, 3, 4])
  for row, i in enumerate([5, 6, 2, 3, 4]):
    np.testing.assert_array_equal(got.observation[row], _transition(i).observation)
    np.testing.assert_array_equal(got.next_observation[row], _transition(i).next_observation)


@pytest.mark.slow  # 100,000 draws: 2-4 s on the 2-core CPU
def test_replay_samples_uniformly_and_never_an_unwritten_row():
  shape = (2,)
  replay = replay_lib.create(100, shape)
  for i in range(10):
    replay = replay_lib.add(replay, replay_lib.Transition(
        jnp.ones(2), jnp.int32(0), jnp.float32(i + 1), jnp.float32(1), jnp.ones(2)), shape)
  rows = np.asarray(replay_lib.sample_rows(replay, jax.random.key(0), 100_000))
  assert rows.min() == 0 and rows.max() == 9  # only the 10 written rows
  counts = np.bincount(rows, minlength=10)
  # Uniform: each count within 5 standard deviations of 10,000.
  assert np.all(np.abs(counts - 10_000) < 5 * np.sqrt(100_000 * 0.1 * 0.9))
  rewards = replay_lib.sample(replay, jax.random.key(1), 1000, shape).reward
  assert np.all(np.asarray(rewards) >= 1)  # no zero (unwritten) row


# ---------------------------------------------------------------------------
# The network.


@pytest.mark.slow  # compiles the network 3 ways: 6-10 s on the 2-core CPU
def test_batch_norm_uses_the_batch_in_training_and_the_running_averages_in_eval():
  model = QNetwork(num_actions=3, parameterization="bn", data_init=False)
  x = jax.random.bernoulli(jax.random.key(0), 0.3, (16, 10, 10, 4)).astype(jnp.float32)
  variables = model.init(jax.random.key(1), x, train=True)
  other = x.at[1:].set(jax.random.bernoulli(jax.random.key(2), 0.6, (15, 10, 10, 4)))
  # Training mode: the first state's Q-values depend on the rest of the batch,
  # and the running averages move.
  q_a, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  q_b, _ = model.apply(variables, other, train=True, mutable=["batch_stats"])
  assert not np.allclose(q_a[0], q_b[0])
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(updated["batch_stats"]), jax.tree.leaves(variables["batch_stats"])))
  # Eval mode: each state on its own, from the running averages.
  e_a = model.apply(variables, x, train=False)
  e_b = model.apply(variables, other, train=False)
  np.testing.assert_allclose(e_a[0], e_b[0], rtol=1e-6)
  np.testing.assert_allclose(model.apply(variables, x[:1], train=False)[0], e_a[0], rtol=1e-5)


@pytest.mark.slow  # two network inits: 2-3 s on the 2-core CPU
def test_normal_takes_deep_q_rl_init_and_wn_the_paper_init():
  x = jnp.ones((4, 10, 10, 4))
  normal = QNetwork(num_actions=3, parameterization="normal", data_init=False)
  params = dqn.dqn_bias_init(normal.init(jax.random.key(0), x, train=False)["params"])
  kernel = np.abs(np.asarray(params["NormalizedDense_0"]["linear"]["kernel"]))
  bound = np.sqrt(3 / 1024)  # U(+-sqrt(3 / fan_in)); fan_in 8 * 8 * 16
  assert 0.95 * bound < kernel.max() <= bound
  biases = [v for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
            if path[-1].key == "b"]
  assert len(biases) == 3 and all(np.all(np.asarray(b) == 0.1) for b in biases)
  wn = QNetwork(num_actions=3, parameterization="wn", data_init=False)
  v = wn.init(jax.random.key(0), x, train=False)["params"]["NormalizedConv_0"]["linear"]["v"]
  assert float(jnp.std(v)) == pytest.approx(0.05, rel=0.15)  # v ~ N(0, 0.05)


@pytest.mark.slow  # fills a replay and compiles the init: ~5 s on the 2-core CPU
@needs_gymnax
def test_wn_data_init_standardises_every_unit_on_the_replay_states():
  config = tiny_dqn_config("wn")
  data = dqn.load_data(config)
  model = dqn.create_model(config, data.info)
  rngs = dict(zip(("params", "env", "init_states"), jax.random.split(jax.random.key(0), 3)))
  variables = dqn.init_variables(config, model, None, rngs)
  rows = jax.random.choice(rngs["init_states"], config.dqn.replay_start,
                           (config.dqn.init_states,), replace=False)
  states = replay_lib.gather(variables["dqn"]["replay"], rows, data.info["obs_shape"]).observation
  assert float(jnp.std(states)) > 0  # real MinAtar states, not zeros
  network = {k: v for k, v in variables.items() if k != "dqn"}
  _, intermediates = model.apply(network, states, train=False, capture_intermediates=True,
                                 mutable=["intermediates"])
  layers = {name: out["__call__"][0] for name, out in intermediates["intermediates"].items()
            if name.startswith("Normalized")}
  assert len(layers) == 3  # conv, dense, output
  for name, t in layers.items():
    t = np.asarray(t).reshape(-1, t.shape[-1])
    live = t.std(axis=0) > 1e-6  # a unit the init batch never excites stays at 0
    np.testing.assert_allclose(t.mean(axis=0)[live], 0.0, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(t.std(axis=0)[live], 1.0, rtol=1e-3, err_msg=name)
  # The target network starts as the initialised online network.
  for a, b in zip(jax.tree.leaves(variables["dqn"]["target"]["params"]),
                  jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # compiles a DQN step: ~10 s on the 2-core CPU
@needs_gymnax
def test_the_target_network_is_the_online_one_copied_every_period():
  config = tiny_dqn_config("normal")
  data = dqn.load_data(config)
  model = dqn.create_model(config, data.info)
  optimizer = lambda lr: dqn.create_optimizer(config, 10, lr)  # noqa: E731
  state = steps.initialize({}, jax.random.key(0), jnp.float32(1), jnp.float32(3e-4),
                           task=dqn, config=config, model=model, optimizer=optimizer)
  step = jax.jit(lambda s, k: steps.train_step(s, {}, k, jnp.float32(1e-3), task=dqn,
                                               config=config, model=model,
                                               optimizer=optimizer))
  history = []
  for _ in range(8):
    history.append(state.params)
    state, _ = step(state, jax.random.key(1))
    synced = (int(state.step) - 1) // 3 * 3  # the update that copied it last: 0, 3, 6
    for a, b in zip(jax.tree.leaves(state.model_state["dqn"]["target"]["params"]),
                    jax.tree.leaves(history[synced])):
      np.testing.assert_array_equal(a, b)
  assert int(state.model_state["dqn"]["env_steps"]) == 50 + 8 * 4
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(history[0]),
                                                      jax.tree.leaves(history[3])))


def test_dqn_config_errors_name_the_key():
  for key, value, match in (("model.parameterization", "wn_mobn", "parameterization"),
                            ("dqn.init_states", 100, "init_states"),
                            ("dqn.env_steps_per_epoch", 42, "multiple"),
                            ("eval_batch_size", 3, "test_episodes"),
                            ("dqn.gamma", 1.5, "gamma")):
    config = tiny_dqn_config()
    *section, name = key.split(".")
    (config[section[0]] if section else config)[name] = value
    with pytest.raises(ValueError, match=match):
      config_checks.validate_config(config, num_devices=1)
  with pytest.raises(ValueError, match="one learning rate"):
    minatar_dqn.get_config("lr1e-4,lr3e-4")


@pytest.mark.slow  # two short runs and a resume
@needs_gymnax
def test_an_interrupted_minatar_run_resumes_to_the_uninterrupted_result(tmp_path):
  config = tiny_dqn_config("wn")
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  records = read_records(tmp_path / "straight")
  epochs = [r for r in records if "test_return" in r]
  assert [r["epoch"] for r in epochs] == [1, 2]
  config_one = tiny_dqn_config("wn")
  config_one.num_epochs = 1
  train.train_and_evaluate(config_one, str(tmp_path / "resumed"))
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  # Everything, the replay, the environment and the target network included.
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert read_records(tmp_path / "resumed") == records


@needs_gymnax
def test_the_dqn_has_no_training_set_and_the_loop_takes_its_epoch_length(tmp_path):
  config = tiny_dqn_config("wn")
  data = dqn.load_data(config)
  assert data.train == {} and data.steps_per_epoch == dqn.updates_per_epoch(config)
  mesh = placement.create_mesh()
  assert program.load_data(config, dqn, mesh).num_train == 0
  # A task without a training set must say how long its epoch is.
  no_length = types.SimpleNamespace(__name__="no_length",
                                    load_data=lambda c: data._replace(steps_per_epoch=None))
  with pytest.raises(ValueError, match="must say how many updates an epoch has"):
    program.load_data(config, no_length, mesh)
  both = types.SimpleNamespace(
      __name__="both", load_data=lambda c: data._replace(train={"x": np.zeros((64, 2))}))
  with pytest.raises(ValueError, match="give one or the other"):
    program.load_data(config, both, mesh)


def test_keep_finite_guards_the_model_but_not_the_unguarded_collections():
  old = steps.TrainState(step=jnp.int32(4), params={"w": jnp.ones(2)},
                         model_state={"batch_stats": {"m": jnp.ones(2)},
                                      "dqn": {"replay": jnp.zeros(3)}},
                         opt_state=(), nonfinite_step=jnp.int32(-1), ema_params=None)
  new = old.replace(step=jnp.int32(5), params={"w": jnp.full(2, 7.0)},
                    model_state={"batch_stats": {"m": jnp.full(2, 7.0)},
                                 "dqn": {"replay": jnp.full(3, 7.0)}})
  kept = steps.keep_finite(old, new, jnp.float32(np.nan), unguarded=dqn.UNGUARDED_COLLECTIONS)
  np.testing.assert_array_equal(kept.params["w"], 1.0)
  np.testing.assert_array_equal(kept.model_state["batch_stats"]["m"], 1.0)
  np.testing.assert_array_equal(kept.model_state["dqn"]["replay"], 7.0)
  assert int(kept.nonfinite_step) == 4
  guarded = steps.keep_finite(old, new, jnp.float32(np.nan))
  np.testing.assert_array_equal(guarded.model_state["dqn"]["replay"], 0.0)
