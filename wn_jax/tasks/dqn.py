"""Deep Q-learning (section 5.4, Figure 5) as a task of the one trainer:
MinAtar through gymnax (`config.env.suite = 'gymnax'`) and the Atari games
through ale-py (`'ale'`, `wn_jax.data.atari`: the emulator behind gymnax's
interface, stepped from the jitted step by a host callback).

One training step of the loop is one DQN update, and everything it needs
happens inside the jitted step: `dqn.env_steps_per_update` (4) steps of the
epsilon-greedy agent in the environment (auto-resetting), each transition
written to the replay (`wn_jax.data.replay`, a ring buffer of device
arrays: whole transitions for MinAtar, one frame per step for Atari), then
one Adamax step on the Huber TD loss of a uniform minibatch
(`q_learning_td_error`, `optax.losses.huber_loss`) against the target
network, which is the online network copied every
`dqn.target_period_updates` updates (before the update whose index is a
multiple of it, deep_q_rl's order). The environment's state, the replay,
the target network and the counters live in the model state's 'dqn'
collection, so the loop's checkpoints hold them and a resumed run is the
uninterrupted one, replay included.

A transition is terminal for learning (discount 0) at game over, and with
`dqn.life_loss_terminal` also where a life was lost (deep_q_rl's training;
the game goes on). With Atari's frame replay an episode cut at the cap is
stored as terminal too: the state after the cut is not in the replay.

The init (`init_variables`) fills the replay with `dqn.replay_start`
steps of the uniformly random policy (deep_q_rl: no learning and full
exploration before that), then runs the network's `init` on
`dqn.init_states` states drawn uniformly from those: for 'wn' (and
'normal' with `model.data_init`) the paper's data-dependent init on those
states; 'normal' without it takes deep_q_rl's init (`models.dqn`). The
target network starts as the initialised online one.

An epoch is `dqn.env_steps_per_epoch` environment steps. There is no
training set (`TaskData.train` is empty and `steps_per_epoch` says the
epoch's updates); the test set is `dqn.test_episodes` episode slots.
Evaluation (`eval_sums`) plays at `dqn.test_epsilon` from keys fixed per
run and sums undiscounted, unclipped returns (Figure 5's "test reward per
episode"): with `dqn.test_env_steps` 0, one episode per slot, all in
parallel until every one ends (or `env.max_steps_in_episode`); otherwise
deep_q_rl's test epoch: each slot plays `test_env_steps` steps, episode
after episode, and the episodes that ended within them count (a slot that
ended none counts its unfinished one).

Bad values in the interface between the agent and the environment raise
ValueError (`validate_config`); gymnax and ale-py are imported lazily so
the other tasks do not need them (`pip install -e '.[rl]'`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from wn_jax.data import atari
from wn_jax.data import replay as replay_lib
from wn_jax.models.dqn import QNetwork, dqn_bias_init
from wn_jax.tasks.base import TaskData

Array = jax.Array

# Epsilon and the target period run over steps, not to the run's end: a run
# may go on to more epochs (wn_jax.tasks).
TRAINING_INDEPENDENT_OF_NUM_EPOCHS = True
RNG_NAMES = ("act", "replay")
INIT_RNG_NAMES = ("env", "init_states")
TRAIN_METRICS = ("loss", "q", "epsilon")
EVAL_METRICS = ("return", "length")
# The environment, the replay and the target network go on whatever the loss
# (guarding them would copy the replay every update: 174 -> 100 updates/s).
UNGUARDED_COLLECTIONS = ("dqn",)
PARAMETERIZATIONS = ("normal", "wn", "bn")
SUITES = ("gymnax", "ale")


def _import_gymnax():
  try:
    import gymnax  # noqa: PLC0415
  except ImportError as error:
    raise ImportError("The DQN task runs MinAtar through gymnax: pip install -e '.[rl]' "
                      "(see README, 'The DQN experiment').") from error
  return gymnax


@functools.cache
def _make_environment(suite: str, name: str, max_steps_in_episode: int, frame_skip: int,
                      noop_max: int):
  if suite == "ale":
    env = atari.AtariEnvironment(name, frame_skip=frame_skip, noop_max=noop_max)
    return env, atari.AtariParams(max_steps_in_episode=max_steps_in_episode)
  env, params = _import_gymnax().make(name)
  return env, params.replace(max_steps_in_episode=max_steps_in_episode)


def make_environment(config: ml_collections.ConfigDict):
  """(env, env_params) of `config.env`: a gymnax environment (MinAtar) or an
  Atari game (`atari.AtariEnvironment`), with the episode cap set to
  `env.max_steps_in_episode` agent steps (truncation, not termination)."""
  e = config.env
  if e.suite not in SUITES:
    raise ValueError(f"config.env.suite must be one of {SUITES}, got {e.suite!r}.")
  ale = e.suite == "ale"
  return _make_environment(e.suite, e.name, e.max_steps_in_episode,
                           e.frame_skip if ale else 0, e.noop_max if ale else 0)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key, for the DQN's keys."""
  d = config.dqn
  if config.model.parameterization not in PARAMETERIZATIONS:
    raise ValueError(f"config.model.parameterization must be one of {PARAMETERIZATIONS} "
                     f"for the DQN, got {config.model.parameterization!r}.")
  for key in ("replay_capacity", "replay_start", "env_steps_per_update",
              "target_period_updates", "env_steps_per_epoch", "test_episodes",
              "init_states"):
    if not d[key] > 0:
      raise ValueError(f"config.dqn.{key} must be positive, got {d[key]!r}.")
  if d.replay_start > d.replay_capacity:
    raise ValueError(f"config.dqn.replay_start={d.replay_start} exceeds the replay's "
                     f"capacity {d.replay_capacity}.")
  if d.init_states > d.replay_start:
    raise ValueError(f"config.dqn.init_states={d.init_states} exceeds the "
                     f"{d.replay_start} states in the replay at the init "
                     "(config.dqn.replay_start).")
  if d.env_steps_per_epoch % d.env_steps_per_update:
    raise ValueError(f"config.dqn.env_steps_per_epoch={d.env_steps_per_epoch} must be a "
                     f"multiple of env_steps_per_update={d.env_steps_per_update}.")
  if not 0 <= d.gamma <= 1:
    raise ValueError(f"config.dqn.gamma must lie in [0, 1], got {d.gamma!r}.")
  for key in ("epsilon_start", "epsilon_end", "test_epsilon"):
    if not 0 <= d[key] <= 1:
      raise ValueError(f"config.dqn.{key} must lie in [0, 1], got {d[key]!r}.")
  if d.epsilon_decay_env_steps < 0 or d.huber_delta <= 0 or d.reward_clip < 0:
    raise ValueError("config.dqn.epsilon_decay_env_steps must be >= 0, huber_delta > 0 "
                     "and reward_clip >= 0 (0 = no clipping).")
  if config.eval_batch_size != d.test_episodes:
    raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must equal "
                     f"config.dqn.test_episodes={d.test_episodes}: the test episodes are "
                     "played in parallel, as one batch.")
  if config.shuffle_train:
    raise ValueError("config.shuffle_train must be False for the DQN: its training rows "
                     "only count the updates of an epoch.")
  if config.env.suite not in SUITES:
    raise ValueError(f"config.env.suite must be one of {SUITES}, got {config.env.suite!r}.")
  if d.test_env_steps < 0:
    raise ValueError(f"config.dqn.test_env_steps must be >= 0 (0 = whole episodes), got "
                     f"{d.test_env_steps!r}.")
  if d.life_loss_terminal and config.env.suite != "ale":
    raise ValueError("config.dqn.life_loss_terminal needs an environment with lives "
                     f"(config.env.suite 'ale'), got {config.env.suite!r}.")
  if config.env.suite == "ale":
    if config.env.frame_skip < 1 or config.env.noop_max < 0:
      raise ValueError("config.env.frame_skip must be >= 1 and config.env.noop_max >= 0, "
                       f"got {config.env.frame_skip!r} and {config.env.noop_max!r}.")
    if d.replay_capacity <= atari.HISTORY:
      raise ValueError(f"config.dqn.replay_capacity={d.replay_capacity} must exceed the "
                       f"frames of a state, {atari.HISTORY}.")


def updates_per_epoch(config: ml_collections.ConfigDict) -> int:
  return config.dqn.env_steps_per_epoch // config.dqn.env_steps_per_update


def load_data(config: ml_collections.ConfigDict) -> TaskData:
  """No training set (the agent makes its own experience): train {}, an
  epoch `updates_per_epoch` updates; test {'episode': [test_episodes]};
  info the environment's observation shape and number of actions."""
  env, env_params = make_environment(config)
  obs_shape = tuple(int(d) for d in env.observation_space(env_params).shape)
  num_actions = int(env.num_actions)
  logging.info("%s: observations %s, %d actions, episodes capped at %d steps.",
               config.env.name, obs_shape, num_actions, config.env.max_steps_in_episode)
  return TaskData(train={},
                  test={"episode": np.arange(config.dqn.test_episodes, dtype=np.int32)},
                  info={"obs_shape": obs_shape, "num_actions": num_actions},
                  steps_per_epoch=updates_per_epoch(config))


def create_model(config: ml_collections.ConfigDict, info: dict[str, Any]) -> QNetwork:
  m = config.model
  return QNetwork(num_actions=info["num_actions"], torso=m.torso,
                  parameterization=m.parameterization, data_init=m.data_init,
                  init_scale=m.init_scale, init_order=m.init_order,
                  bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
                  conv_weight_grad=m.conv_weight_grad)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     learning_rate: float | Array | None = None
                     ) -> optax.GradientTransformation:
  """Adamax (the paper: momentum b1 = 0.5; b2 and eps not stated, Kingma &
  Ba's defaults) at a constant learning rate."""
  del steps_per_epoch
  opt = config.optimizer
  return optax.inject_hyperparams(optax.adamax)(
      learning_rate=opt.learning_rate if learning_rate is None else learning_rate,
      b1=opt.b1, b2=opt.b2, eps=opt.eps)


# ---------------------------------------------------------------------------
# Acting in the environment.


def epsilon(config: ml_collections.ConfigDict, learning_env_steps: Array) -> Array:
  """Exploration after `learning_env_steps` steps past the replay start:
  linear from epsilon_start to epsilon_end over epsilon_decay_env_steps."""
  d = config.dqn
  if d.epsilon_decay_env_steps == 0:
    return jnp.asarray(d.epsilon_end, jnp.float32)
  fraction = jnp.clip(learning_env_steps / d.epsilon_decay_env_steps, 0.0, 1.0)
  return (d.epsilon_start + fraction * (d.epsilon_end - d.epsilon_start)).astype(jnp.float32)


def epsilon_greedy(key: Array, q_values: Array, eps: Array) -> Array:
  """int32 actions [...]: argmax of q_values [..., A], or with probability
  eps a uniform action."""
  explore_key, action_key = jax.random.split(key)
  shape = q_values.shape[:-1]
  random = jax.random.randint(action_key, shape, 0, q_values.shape[-1])
  explore = jax.random.uniform(explore_key, shape) < eps
  return jnp.where(explore, random, jnp.argmax(q_values, axis=-1)).astype(jnp.int32)


def _act_and_store(config, model, variables, dqn: dict, key: Array, num_steps: int,
                   random_policy: bool) -> dict:
  """`num_steps` steps of the agent (greedy w.r.t. `variables` with the
  current epsilon, or uniformly random), every transition into the replay."""
  env, env_params = make_environment(config)
  obs_shape = dqn["observation"].shape

  def one(dqn, step_key):
    policy_key, env_key = jax.random.split(step_key)
    if random_policy:
      action = jax.random.randint(policy_key, (), 0, env.num_actions).astype(jnp.int32)
    else:
      q = model.apply(variables, dqn["observation"][None], train=False)[0]
      learning_steps = jnp.maximum(dqn["env_steps"] - config.dqn.replay_start, 0)
      action = epsilon_greedy(policy_key, q, epsilon(config, learning_steps))
    observation, env_state, reward, terminated, truncated, info = env.step(
        env_key, dqn["env_state"], action, env_params)
    stored_reward = reward if config.dqn.reward_clip == 0 else jnp.clip(
        reward, -config.dqn.reward_clip, config.dqn.reward_clip)
    transition = replay_lib.Transition(
        observation=dqn["observation"], action=action, reward=stored_reward,
        discount=1.0 - learning_terminal(config, terminated, truncated, info),
        next_observation=info["final_observation"])
    replay = replay_lib.add(dqn["replay"], transition, obs_shape,
                            episode_end=jnp.logical_or(terminated, truncated))
    dqn = {**dqn, "replay": replay,
           "env_state": env_state, "observation": observation,
           "env_steps": dqn["env_steps"] + 1}
    return dqn, None

  dqn, _ = jax.lax.scan(one, dqn, jax.random.split(key, num_steps))
  return dqn


def learning_terminal(config: ml_collections.ConfigDict, terminated: Array,
                      truncated: Array, info: dict[str, Array]) -> Array:
  """float32: 1 where the learner's target gets no bootstrap: game over;
  with `dqn.life_loss_terminal` a life lost; with Atari's frame replay an
  episode cut at the cap (its next state is not stored)."""
  terminal = terminated
  if config.dqn.life_loss_terminal:
    terminal = jnp.logical_or(terminal, info["life_lost"])
  if config.env.suite == "ale":
    terminal = jnp.logical_or(terminal, truncated)
  return terminal.astype(jnp.float32)


def create_replay(config: ml_collections.ConfigDict, obs_shape: tuple[int, ...]):
  """An empty replay: one frame per step for Atari (observations [H, W,
  history]), whole transitions (bit-packed if `dqn.pack_replay`) for MinAtar."""
  d = config.dqn
  if config.env.suite == "ale":
    return replay_lib.create_frames(d.replay_capacity, obs_shape[:-1], obs_shape[-1])
  return replay_lib.create(d.replay_capacity, obs_shape, packed=d.pack_replay)


# ---------------------------------------------------------------------------
# The task interface.


def init_variables(config: ml_collections.ConfigDict, model: QNetwork, batch, rngs):
  """Reset the environment, fill the replay with `dqn.replay_start` random
  steps, initialise the network on `dqn.init_states` replay states (the
  data-dependent init for 'wn'), copy it to the target network."""
  del batch
  d = config.dqn
  logging.info("DQN init: %d random-policy steps into the replay, then the network's init "
               "on %d of their states (not the loop's init batch).", d.replay_start,
               d.init_states)
  env, env_params = make_environment(config)
  reset_key, fill_key = jax.random.split(rngs["env"])
  observation, env_state = env.reset(reset_key, env_params)
  obs_shape = tuple(observation.shape)
  dqn = {"replay": create_replay(config, obs_shape),
         "env_state": env_state, "observation": observation,
         "env_steps": jnp.zeros((), jnp.int32), "updates": jnp.zeros((), jnp.int32)}
  dqn = _act_and_store(config, model, None, dqn, fill_key, d.replay_start,
                       random_policy=True)
  rows = jax.random.choice(rngs["init_states"], d.replay_start, (d.init_states,),
                           replace=False)
  states = replay_lib.gather(dqn["replay"], rows, obs_shape).observation
  variables = dict(model.init({"params": rngs["params"]}, states, train=True))
  if model.parameterization == "normal" and not model.data_init:
    variables["params"] = dqn_bias_init(variables["params"])
  dqn["target"] = {k: v for k, v in variables.items() if k != "frozen"}
  return {**variables, "dqn": dqn}


def _network_state(model_state: dict) -> dict:
  """The network's collections (batch_stats, frozen) without the 'dqn' one."""
  return {k: v for k, v in model_state.items() if k != "dqn"}


def q_learning_td_error(q_tm1: Array, action: Array, reward: Array, discount: Array,
                        q_t: Array) -> Array:
  """r + discount max_a q_t[a] - q_tm1[action], per transition: q_tm1, q_t
  [B, A]; action, reward, discount [B] (discount = gamma, 0 at a terminal)."""
  target = reward + discount * jnp.max(q_t, axis=-1)
  return target - jnp.take_along_axis(q_tm1, action[:, None], axis=-1)[:, 0]


def td_loss(config: ml_collections.ConfigDict, q_tm1: Array, transitions, q_t: Array
            ) -> Array:
  """Mean over the minibatch of the Huber loss (quadratic up to
  `dqn.huber_delta`, then linear) of the Q-learning TD error against the
  target network's q_t [B, A], which gets no gradient."""
  td = q_learning_td_error(q_tm1, transitions.action, transitions.reward,
                           config.dqn.gamma * transitions.discount,
                           jax.lax.stop_gradient(q_t))
  return jnp.mean(optax.losses.huber_loss(td, delta=config.dqn.huber_delta))


def train_loss(config: ml_collections.ConfigDict, model: QNetwork, params, model_state,
               batch, rngs: dict[str, Array]):
  """Act `dqn.env_steps_per_update` steps (storing them), then the TD loss of
  a uniform minibatch of `batch_size` transitions. Returns (loss, ({loss,
  q, epsilon}, {'dqn': ..., 'batch_stats': ...})); gradients flow only into
  the online network's Q(s, a)."""
  del batch
  d = config.dqn
  dqn = model_state["dqn"]
  network_state = _network_state(model_state)
  acting = {"params": jax.lax.stop_gradient(params), **network_state}
  dqn = _act_and_store(config, model, acting, dqn, rngs["act"], d.env_steps_per_update,
                       random_policy=False)
  sync = dqn["updates"] % d.target_period_updates == 0
  current = {"params": jax.lax.stop_gradient(params),
             **{k: v for k, v in network_state.items() if k != "frozen"}}
  target = jax.tree.map(lambda now, old: jnp.where(sync, now, old), current, dqn["target"])
  obs_shape = dqn["observation"].shape
  transitions = replay_lib.sample(dqn["replay"], rngs["replay"], config.batch_size, obs_shape)
  q_tm1, updates = model.apply({"params": params, **network_state}, transitions.observation,
                               train=True, mutable=["batch_stats"])
  q_t = model.apply({**target, **({"frozen": network_state["frozen"]}
                                  if "frozen" in network_state else {})},
                    transitions.next_observation, train=False)
  loss = td_loss(config, q_tm1, transitions, q_t)
  q_taken = jnp.take_along_axis(q_tm1, transitions.action[:, None], axis=-1)
  learning_steps = jnp.maximum(dqn["env_steps"] - d.replay_start, 0)
  metrics = {"loss": loss, "q": jnp.mean(q_taken), "epsilon": epsilon(config, learning_steps)}
  dqn = {**dqn, "target": target, "updates": dqn["updates"] + 1}
  return loss, (metrics, {**updates, "dqn": dqn})


def eval_sums(config: ml_collections.ConfigDict, model: QNetwork, variables, batch,
              mask: Array, key: Array) -> dict[str, Array]:
  """Plays at `dqn.test_epsilon`, one stream per slot of the batch, all in
  parallel: with `dqn.test_env_steps` 0 one episode each, until every one
  ends (terminated or truncated at the cap); otherwise `test_env_steps`
  steps each, counting the episodes that ended in them (or the unfinished
  one of a slot that ended none). Sums over the unmasked slots: 'return'
  (unclipped) and 'length' of the counted episodes, and their number,
  'count'."""
  env, env_params = make_environment(config)
  network = {k: v for k, v in variables.items() if k != "dqn"}
  slots = batch["episode"].shape[0]
  keys = jax.vmap(lambda e: jax.random.fold_in(key, e))(batch["episode"])
  step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
  observation, env_state = jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)
  zeros = jnp.zeros(slots, jnp.float32)
  # (observation, env_state, done, episode return, episode length, sum of
  # counted returns, of counted lengths, counted episodes, t)
  carry = (observation, env_state, jnp.zeros(slots, bool), zeros, zeros, zeros, zeros, zeros,
           jnp.zeros((), jnp.int32))
  budget = config.dqn.test_env_steps

  def running(carry):
    done, t = carry[2], carry[-1]
    if budget:
      return t < budget
    return jnp.logical_and(~jnp.all(done), t < config.env.max_steps_in_episode)

  def one(carry):
    observation, env_state, done, ret, length, ret_sum, length_sum, count, t = carry
    step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, t)))(keys)
    q = model.apply(network, observation, train=False)
    action = jax.vmap(epsilon_greedy, in_axes=(0, 0, None))(
        step_keys[:, 0], q, config.dqn.test_epsilon)
    observation, env_state, reward, terminated, truncated, _ = step(
        step_keys[:, 1], env_state, action, env_params)
    live = (~done).astype(jnp.float32)
    ret, length = ret + live * reward, length + live
    ended = jnp.logical_or(terminated, truncated)
    if budget:  # episode after episode: bank each one that ends
      banked = ended.astype(jnp.float32)
      ret_sum, length_sum, count = (ret_sum + banked * ret, length_sum + banked * length,
                                    count + banked)
      ret, length = (1.0 - banked) * ret, (1.0 - banked) * length
    else:
      done = done | ended
    return observation, env_state, done, ret, length, ret_sum, length_sum, count, t + 1

  _, _, _, ret, length, ret_sum, length_sum, count, _ = jax.lax.while_loop(
      running, one, carry)
  if not budget:  # each slot's one episode
    ret_sum, length_sum, count = ret, length, jnp.ones(slots, jnp.float32)
  none = count == 0  # a slot that ended no episode counts its unfinished one
  ret_sum, length_sum = jnp.where(none, ret, ret_sum), jnp.where(none, length, length_sum)
  count = jnp.where(none, 1.0, count)
  return {"return": jnp.sum(ret_sum * mask), "length": jnp.sum(length_sum * mask),
          "count": jnp.sum(count * mask)}
