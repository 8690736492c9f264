"""The Atari DQN (section 5.4 at the paper's scale): the frame replay, the
ALE environment behind gymnax's interface, deep_q_rl's test epoch, and a
few thousand frames of both parameterizations through the one loop, with
a checkpoint and a resume."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_records

from configs import atari_dqn, minatar_dqn
from wn_jax.data import replay as replay_lib
from wn_jax.tasks import dqn
from wn_jax.trainer import config_checks, train

needs_ale = pytest.mark.skipif(importlib.util.find_spec("ale_py") is None,
                               reason="needs the rl extra: pip install -e '.[test,rl]'")
needs_gymnax = pytest.mark.skipif(importlib.util.find_spec("gymnax") is None,
                                  reason="needs the rl extra: pip install -e '.[test,rl]'")


def tiny_atari_config(variant="wn"):
  """A few thousand frames: 100 random steps, 2 epochs of 200 agent steps
  (50 updates each), test epochs of 100 steps."""
  config = atari_dqn.get_config(f"{variant},breakout")
  config.env.max_steps_in_episode = 500
  config.dqn.replay_capacity = 400
  config.dqn.replay_start = 100
  config.dqn.init_states = 50
  config.dqn.env_steps_per_epoch = 200
  config.dqn.target_period_updates = 10
  config.dqn.epsilon_decay_env_steps = 400
  config.dqn.test_env_steps = 100
  config.batch_size = 8
  config.num_epochs = 2
  config.log_every_steps = 25
  config.log_norms_every_steps = 50
  return config


# ---------------------------------------------------------------------------
# The frame replay (no emulator needed).


def _play_frames(num_steps, episode_ends, history=4, shape=(2, 3)):
  """The observations an agent sees over `num_steps` steps of a fake game
  whose frame t is filled with t + 1, with the environment resetting after
  the steps in `episode_ends` (the first frame repeated at each start), and
  the replay written as the task writes it."""
  replay = replay_lib.create_frames(13, shape, history)
  frame = lambda t: jnp.full(shape, t + 1, jnp.uint8)  # noqa: E731
  observation = jnp.repeat(frame(0)[..., None], history, axis=-1)
  seen = []
  for t in range(num_steps):
    end = t in episode_ends
    nxt = frame(t + 1)
    following = jnp.concatenate([observation[..., 1:], nxt[..., None]], axis=-1)
    if end:
      following_for_agent = jnp.repeat(nxt[..., None], history, axis=-1)
    else:
      following_for_agent = following
    transition = replay_lib.Transition(observation=observation, action=jnp.int32(t % 3),
                                       reward=jnp.float32(t), discount=jnp.float32(not end),
                                       next_observation=following)
    replay = replay_lib.add(replay, transition, (*shape, history), episode_end=end)
    seen.append((observation, following_for_agent, end))
    observation = following_for_agent
  return replay, seen


def test_the_frame_replay_rebuilds_each_observation_the_agent_saw():
  steps_played = 30  # more than the capacity of 13: the ring has wrapped
  replay, seen = _play_frames(steps_played, episode_ends={4, 5, 17, 24})
  capacity = 13
  valid = set(range(capacity)) - {int(replay.position) + k for k in range(3)} - {
      (int(replay.position) - 1) % capacity}
  for row in sorted(valid):
    t = steps_played - capacity + (row - int(replay.position)) % capacity
    got = replay_lib.gather(replay, jnp.array([row]), (2, 3, 4), jnp.uint8)
    observation, following, end = seen[t]
    np.testing.assert_array_equal(got.observation[0], observation)
    assert float(got.reward[0]) == t and float(got.discount[0]) == (not end)
    if not end:  # after an episode's end, the next row starts the next episode
      np.testing.assert_array_equal(got.next_observation[0], following)


def test_the_frame_replay_samples_uniformly_and_only_whole_transitions():
  replay, _ = _play_frames(30, episode_ends={9})
  position = int(replay.position)
  valid = set(range(13)) - {position, position + 1, position + 2} - {position - 1}
  rows = np.asarray(replay_lib.sample_rows(replay, jax.random.key(0), 45_000, history=4))
  assert set(rows.tolist()) == valid
  counts = np.bincount(rows, minlength=13)[sorted(valid)]
  expected = 45_000 / len(valid)
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts
  # Before the ring is full: every row written but the newest.
  young, _ = _play_frames(6, episode_ends=set())
  rows = np.asarray(replay_lib.sample_rows(young, jax.random.key(1), 5_000, history=4))
  assert set(rows.tolist()) == {0, 1, 2, 3, 4}


def test_atari_config_errors_name_the_key():
  for key, value, match in (("env.suite", "gym", "suite"),
                            ("env.noop_max", -1, "noop_max"),
                            ("dqn.test_env_steps", -1, "test_env_steps"),
                            ("eval_batch_size", 2, "test_episodes")):
    config = tiny_atari_config()
    section, name = key.split(".") if "." in key else (None, key)
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=match):
      config_checks.validate_config(config, num_devices=1)
  config = tiny_atari_config()
  config.dqn.replay_capacity, config.dqn.replay_start, config.dqn.init_states = 4, 3, 2
  with pytest.raises(ValueError, match="replay_capacity=4 must exceed"):
    config_checks.validate_config(config, num_devices=1)
  config = minatar_dqn.get_config("wn")
  config.dqn.life_loss_terminal = True
  with pytest.raises(ValueError, match="life_loss_terminal needs an environment with lives"):
    config_checks.validate_config(config, num_devices=1)
  with pytest.raises(ValueError, match="one game"):
    atari_dqn.get_config("breakout,seaquest")


def test_atari_short_epochs_train_the_same_steps_tested_more_often():
  paper, short = atari_dqn.get_config("wn"), atari_dqn.get_config("wn,short_epochs")
  assert short.dqn.env_steps_per_epoch * 5 == paper.dqn.env_steps_per_epoch == 250_000
  assert short.num_epochs * short.dqn.env_steps_per_epoch == 50_000_000
  assert short.dqn.test_env_steps / short.dqn.env_steps_per_epoch == 0.5
  differing = {k for k in paper.dqn if paper.dqn[k] != short.dqn[k]}
  assert differing == {"env_steps_per_epoch", "test_env_steps"}


# ---------------------------------------------------------------------------
# The environment.


def _bilinear_reference(screen, size):
  """OpenCV's INTER_LINEAR resize (half-pixel centres, edges clamped), in numpy."""
  def weights(n_in):
    x = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, x - lo
  r0, r1, fr = weights(screen.shape[0])
  c0, c1, fc = weights(screen.shape[1])
  s = screen.astype(np.float64)
  rows = s[r0] * (1 - fr)[:, None] + s[r1] * fr[:, None]
  return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


def test_frames_are_resized_bilinearly_as_deep_q_rl_did():
  from wn_jax.data.atari import resize_frame
  screen = np.random.default_rng(0).integers(0, 256, (210, 160)).astype(np.uint8)
  resized = np.asarray(resize_frame(jnp.asarray(screen), 84))
  assert resized.shape == (84, 84) and resized.dtype == np.uint8
  np.testing.assert_allclose(resized, np.round(_bilinear_reference(screen, 84)), atol=1)


@needs_ale
def test_the_atari_environment_plays_as_the_emulator_played_directly():
  """Restoring the serialized state every step plays the frames, rewards and
  lives of one emulator played straight through, and vmap plays each
  member's game."""
  import ale_py  # noqa: PLC0415

  from wn_jax.data.atari import AtariEnvironment, AtariParams, resize_frame
  env = AtariEnvironment("breakout")
  actions = np.random.default_rng(0).integers(0, env.num_actions, 120)
  step = jax.jit(lambda k, s, a: env.step(k, s, a, AtariParams(10_000)))
  key = jax.random.key(3)
  observation, state = jax.jit(env.reset)(key)
  noops = int(jax.random.randint(key, (), 0, 31))

  ale = ale_py.ALEInterface()
  ale.setLoggerMode(ale_py.LoggerMode.Error)
  ale.setFloat("repeat_action_probability", 0.0)
  ale.loadROM(ale_py.roms.get_rom_path("breakout"))
  minimal = ale.getMinimalActionSet()
  for _ in range(noops + 1):
    ale.act(minimal[0])
  previous = ale.getScreenGrayscale()
  ale.act(minimal[0])
  expected = np.asarray(resize_frame(jnp.asarray(np.maximum(previous,
                                                            ale.getScreenGrayscale())), 84))
  np.testing.assert_array_equal(observation[..., 0], expected)
  np.testing.assert_array_equal(observation[..., 3], expected)
  lives_lost = 0
  for i, action in enumerate(actions):
    observation, state, reward, terminated, _, info = step(
        jax.random.fold_in(key, i), state, jnp.int32(action))
    total, screens = 0.0, []
    for _ in range(4):
      total += ale.act(minimal[action])
      screens.append(ale.getScreenGrayscale())
    frame = np.asarray(resize_frame(jnp.asarray(np.maximum(screens[-2], screens[-1])), 84))
    np.testing.assert_array_equal(observation[..., -1], frame)
    assert float(reward) == total and int(state.lives) == ale.lives()
    assert not bool(terminated)
    lives_lost += int(info["life_lost"])
  assert lives_lost == 5 - ale.lives() > 0  # this action sequence loses lives

  batched = jax.jit(jax.vmap(env.reset))(jax.random.split(key, 3))
  for m in range(3):
    single = env.reset(jax.random.split(key, 3)[m])
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(batched)):
      np.testing.assert_array_equal(a, b[m])


@needs_ale
def test_an_atari_episode_is_cut_at_the_cap_and_starts_afresh():
  from wn_jax.data.atari import AtariEnvironment, AtariParams
  env = AtariEnvironment("space_invaders")
  step = jax.jit(lambda k, s: env.step(k, s, jnp.int32(0), AtariParams(5)))
  _, state = env.reset(jax.random.key(0))
  for t in range(1, 6):
    observation, state, _, terminated, truncated, info = step(jax.random.key(t), state)
    assert bool(truncated) == (t == 5) and not bool(terminated)
  assert int(state.time) == 0
  assert np.all(observation == observation[..., :1])  # a new episode's first frame, 4 times
  assert not np.array_equal(info["final_observation"], observation)


@needs_gymnax
def test_a_test_epoch_counts_the_episodes_that_ended_in_its_steps():
  """deep_q_rl's test epoch on Space Invaders-MinAtar cut at 7 steps: 20 steps
  end two episodes (14 steps counted); 5 steps end none, and the unfinished
  one counts."""
  config = minatar_dqn.get_config("normal")
  config.env.max_steps_in_episode = 7
  config.dqn.test_episodes = config.eval_batch_size = 3
  data = dqn.load_data(config)
  model = dqn.create_model(config, data.info)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *data.info["obs_shape"])),
                         train=False)
  batch, mask = {"episode": jnp.arange(3)}, jnp.array([1.0, 1.0, 0.0])
  for budget, count, length in ((20, 2, 14), (5, 1, 5)):
    config.dqn.test_env_steps = budget
    sums = dqn.eval_sums(config, model, variables, batch, mask, jax.random.key(1))
    assert float(sums["count"]) == 2 * count and float(sums["length"]) == 2 * length
  config.dqn.test_env_steps = 0  # whole episodes: one per slot
  sums = dqn.eval_sums(config, model, variables, batch, mask, jax.random.key(1))
  assert float(sums["count"]) == 2 and float(sums["length"]) == 14


# ---------------------------------------------------------------------------
# Through the loop.


@pytest.mark.slow  # three short Atari runs of the Nature network: ~1 min
@needs_ale
def test_atari_runs_both_parameterizations_and_resumes_to_the_uninterrupted_result(
    tmp_path):
  normal = train.train_and_evaluate(tiny_atari_config("normal"), str(tmp_path / "normal"))
  assert int(normal.model_state["dqn"]["env_steps"]) == 100 + 2 * 200
  records = read_records(tmp_path / "normal")
  assert [r["epoch"] for r in records if "test_return" in r] == [1, 2]
  assert all(np.isfinite(r["train_loss"]) for r in records if "train_loss" in r)

  straight = train.train_and_evaluate(tiny_atari_config("wn"), str(tmp_path / "straight"))
  config_one = tiny_atari_config("wn")
  config_one.num_epochs = 1
  train.train_and_evaluate(config_one, str(tmp_path / "resumed"))
  resumed = train.train_and_evaluate(tiny_atari_config("wn"), str(tmp_path / "resumed"))
  # Everything: the emulator's state, the frame replay, the target network.
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert read_records(tmp_path / "resumed") == read_records(tmp_path / "straight")


@needs_ale
def test_ale_grayscale_is_deep_q_rl_conversion_of_the_rgb_screen():
  """deep_q_rl took OpenCV's RGB2GRAY of the RGB screen; ALE's grayscale
  screen (ours) equals its rounded 0.299 R + 0.587 G + 0.114 B."""
  import ale_py  # noqa: PLC0415
  ale = ale_py.ALEInterface()
  ale.setLoggerMode(ale_py.LoggerMode.Error)
  for game in ("space_invaders", "breakout", "seaquest", "enduro"):
    ale.loadROM(ale_py.roms.get_rom_path(game))
    actions = ale.getMinimalActionSet()
    rng = np.random.default_rng(0)
    for i in range(400):
      ale.act(actions[rng.integers(len(actions))])
      if i % 20 == 0:
        rgb = ale.getScreenRGB().astype(np.float64)
        expected = np.round(rgb @ np.array([0.299, 0.587, 0.114]))
        np.testing.assert_array_equal(ale.getScreenGrayscale(), expected)
