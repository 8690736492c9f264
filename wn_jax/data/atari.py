"""Atari 2600 games (ale-py) as a functional environment with gymnax's
interface, for the DQN task's jitted act-store-update step.

The Arcade Learning Environment is a C++ emulator on the host. To step it
from inside `jit` (and `vmap`, and a checkpoint) the emulator's whole state
travels in the environment state as bytes (`ALEState.serialize()`, about
14 KB) and each step is a pure host function of it, called with
`jax.pure_callback`: restore the state, play the action, serialize the new
state. A run's environment is thereby in its checkpoint, and a resumed run
plays the same frames as the uninterrupted one.

The protocol is deep_q_rl's (`run_nature.py`, `ale_experiment.py`; the
labels of ../shared/DQN_RECIPE.md sections 2-3, listed in docs/DQN.md):
  - the ROM of ale-py's wheel, `repeat_action_probability` 0, the minimal
    action set;
  - an episode starts with a full reset, a uniform number of no-op frames
    in [0, noop_max], then two more no-op frames;
  - each agent step repeats the action for `frame_skip` frames and sums
    their rewards; the frame seen is the pixel-wise maximum of the last two
    grayscale screens (210x160), resized to 84x84 bilinearly (on the
    device: `jax.image.resize`, 'linear', no antialiasing, rounded to
    uint8);
  - the observation is the 4 most recent frames, [84, 84, 4] uint8, oldest
    first; at an episode's start the first frame fills all four;
  - `terminated` is game over; `info['life_lost']` says a life was lost
    without game over (the learner makes that transition terminal; the game
    goes on, as in deep_q_rl); `truncated` is the episode cap
    `max_steps_in_episode` agent steps (deep_q_rl had none; ALE's v5
    environments stop at 108,000 frames = 27,000 agent steps);
  - after game over or the cap the environment resets itself (gymnax's
    auto-reset), and `info['final_observation']` is the last observation
    of the ended episode.

Nothing here needs gymnasium or OpenCV; ale-py is imported lazily (`pip
install -e '.[rl]'`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SCREEN_SHAPE = (210, 160)  # ALE's screen, rows x columns
# Bytes reserved for a serialized emulator state; ALE's states measured
# 14,417-14,434 bytes (Space Invaders, Breakout, Seaquest, Enduro).
STATE_BYTES = 32_768
FRAME_SIZE = 84  # the side of a resized frame (deep_q_rl, Mnih et al.)
HISTORY = 4  # frames per observation (deep_q_rl's PHI_LENGTH)


def _import_ale():
  try:
    import ale_py  # noqa: PLC0415
  except ImportError as error:
    raise ImportError("The Atari DQN runs the games through ale-py: pip install -e '.[rl]' "
                      "(see README, 'The DQN experiment').") from error
  return ale_py


class AtariState(NamedTuple):
  """The environment's state: the serialized emulator `ale` (uint8
  [STATE_BYTES], of which the first `ale_size` bytes hold the state), the
  frame stack [84, 84, history] uint8, the lives left and the agent steps
  of the current episode (int32 [])."""
  ale: Array
  ale_size: Array
  frames: Array
  lives: Array
  time: Array


class AtariParams(NamedTuple):
  """Static settings (gymnax's `env_params`)."""
  max_steps_in_episode: int = 27_000


class _Space(NamedTuple):
  shape: tuple[int, ...]


class _Emulator:
  """One ALE per process and game, used as a pure function of a
  serialized state: every call restores its input state first."""

  def __init__(self, game: str, frame_skip: int):
    ale_py = _import_ale()
    self._ale_py = ale_py
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.setInt("random_seed", 0)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.setInt("max_num_frames_per_episode", 0)  # the cap is the agent's
    path = ale_py.roms.get_rom_path(game)
    if path is None:
      raise ValueError(f"ale-py {ale_py.__version__} has no ROM {game!r}; its ROMs: "
                       f"{', '.join(sorted(ale_py.roms.get_all_rom_ids()))}.")
    ale.loadROM(path)
    self.ale = ale
    # Every reset starts from the state after loading, so that it is a
    # function of its arguments alone (the state counts every frame played).
    self._loaded = ale.cloneState(include_rng=True)
    self.actions = list(ale.getMinimalActionSet())
    self.frame_skip = frame_skip

  def _serialized(self) -> tuple[np.ndarray, np.int32]:
    data = self.ale.cloneState(include_rng=True).serialize()
    if len(data) > STATE_BYTES:
      raise RuntimeError(f"A serialized ALE state takes {len(data)} bytes, more than the "
                         f"{STATE_BYTES} of wn_jax.data.atari.STATE_BYTES.")
    out = np.zeros(STATE_BYTES, np.uint8)
    out[:len(data)] = np.frombuffer(data, np.uint8)
    return out, np.int32(len(data))

  def _restore(self, state: np.ndarray, size: np.ndarray) -> None:
    self.ale.restoreState(self._ale_py.ALEState(np.asarray(state)[:int(size)].tobytes()))

  def _screen(self) -> np.ndarray:
    return self.ale.getScreenGrayscale()

  def reset(self, noops: np.ndarray):
    """Full reset, `noops` + 2 no-op frames: (state, size, pooled screen
    [210, 160] uint8, lives)."""
    self.ale.restoreState(self._loaded)
    self.ale.reset_game()
    for _ in range(int(noops)):
      self.ale.act(self.actions[0])
    self.ale.act(self.actions[0])
    previous = self._screen()
    self.ale.act(self.actions[0])
    screen = np.maximum(previous, self._screen())
    state, size = self._serialized()
    return state, size, screen, np.int32(self.ale.lives())

  def step(self, state: np.ndarray, size: np.ndarray, action: np.ndarray,
           noops: np.ndarray, cap: np.ndarray):
    """One agent step from `state`, then a reset (with `noops`) after game
    over or if `cap`: (state, size, pooled screen, reward summed over the
    frames, game over, lives, the reset's pooled screen (zeros without a
    reset), the lives after it)."""
    self._restore(state, size)
    reward, previous, screen = 0.0, None, None
    for _ in range(self.frame_skip):
      reward += self.ale.act(self.actions[int(action)])
      previous, screen = screen, self._screen()
      if self.ale.game_over():
        break
    pooled = screen if previous is None else np.maximum(previous, screen)
    game_over, lives = np.bool_(self.ale.game_over()), np.int32(self.ale.lives())
    if game_over or cap:
      state, size, reset_screen, reset_lives = self.reset(noops)
    else:
      state, size = self._serialized()
      reset_screen, reset_lives = np.zeros_like(pooled), lives
    return (state, size, pooled, np.float32(reward), game_over, lives, reset_screen,
            reset_lives)


@functools.cache
def _emulator(game: str, frame_skip: int) -> _Emulator:
  return _Emulator(game, frame_skip)


def resize_frame(screen: Array, size: int) -> Array:
  """A grayscale screen [210, 160] uint8 -> [size, size] uint8, bilinear
  without antialiasing (deep_q_rl's cv2 INTER_LINEAR 'scale', no crop)."""
  resized = jax.image.resize(screen.astype(jnp.float32), (size, size), "linear",
                             antialias=False)
  return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)


class AtariEnvironment:
  """An ALE game with gymnax's functional interface (`reset`, `step`,
  `observation_space`, `num_actions`, `default_params`); see the module
  docstring for the protocol.

  Attributes:
    game: ale-py's ROM id ('space_invaders', 'breakout', ...).
    frame_skip: emulator frames per agent step (4).
    noop_max: the most no-op frames at an episode's start (30).
    frame_size: the side of the resized frame (84).
    history: frames per observation (4).
  """

  def __init__(self, game: str, frame_skip: int = 4, noop_max: int = 30,
               frame_size: int = FRAME_SIZE, history: int = HISTORY):
    for name, value in (("frame_skip", frame_skip), ("frame_size", frame_size),
                        ("history", history)):
      if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}.")
    if noop_max < 0:
      raise ValueError(f"noop_max must be >= 0, got {noop_max}.")
    self.game, self.frame_skip, self.noop_max = game, frame_skip, noop_max
    self.frame_size, self.history = frame_size, history
    self.num_actions = len(_emulator(game, frame_skip).actions)

  @property
  def default_params(self) -> AtariParams:
    return AtariParams()

  def observation_space(self, params: AtariParams | None = None) -> _Space:
    del params
    return _Space((self.frame_size, self.frame_size, self.history))

  # The host calls, as pure functions of their arguments ('sequential' under
  # vmap: one emulator plays each member's state in turn).

  def _host_reset(self, noops: Array):
    emulator = _emulator(self.game, self.frame_skip)
    shapes = (jax.ShapeDtypeStruct((STATE_BYTES,), jnp.uint8),
              jax.ShapeDtypeStruct((), jnp.int32),
              jax.ShapeDtypeStruct(SCREEN_SHAPE, jnp.uint8),
              jax.ShapeDtypeStruct((), jnp.int32))
    return jax.pure_callback(emulator.reset, shapes, noops, vmap_method="sequential")

  def _host_step(self, ale: Array, ale_size: Array, action: Array, noops: Array,
                 cap: Array):
    emulator = _emulator(self.game, self.frame_skip)
    screen = jax.ShapeDtypeStruct(SCREEN_SHAPE, jnp.uint8)
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)  # noqa: E731
    shapes = (jax.ShapeDtypeStruct((STATE_BYTES,), jnp.uint8), scalar(jnp.int32), screen,
              scalar(jnp.float32), scalar(jnp.bool_), scalar(jnp.int32), screen,
              scalar(jnp.int32))
    return jax.pure_callback(emulator.step, shapes, ale, ale_size, action, noops, cap,
                             vmap_method="sequential")

  def _first_frames(self, screen: Array) -> Array:
    frame = resize_frame(screen, self.frame_size)
    return jnp.repeat(frame[..., None], self.history, axis=-1)

  def _noops(self, key: Array) -> Array:
    return jax.random.randint(key, (), 0, self.noop_max + 1)

  def reset(self, key: Array, params: AtariParams | None = None
            ) -> tuple[Array, AtariState]:
    """A new episode: (observation [84, 84, history] uint8, state)."""
    del params
    ale, ale_size, screen, lives = self._host_reset(self._noops(key))
    frames = self._first_frames(screen)
    return frames, AtariState(ale=ale, ale_size=ale_size, frames=frames, lives=lives,
                              time=jnp.zeros((), jnp.int32))

  def step(self, key: Array, state: AtariState, action: Array,
           params: AtariParams | None = None):
    """One agent step, reset after game over or the cap: (observation,
    state, reward, terminated, truncated, info) with info
    {'final_observation', 'life_lost', 'terminated', 'truncated'}."""
    params = self.default_params if params is None else params
    time = state.time + 1
    cap = time >= params.max_steps_in_episode
    (ale, ale_size, screen, reward, game_over, lives, reset_screen,
     reset_lives) = self._host_step(state.ale, state.ale_size, action, self._noops(key), cap)
    frame = resize_frame(screen, self.frame_size)
    final = jnp.concatenate([state.frames[..., 1:], frame[..., None]], axis=-1)
    truncated = jnp.logical_and(~game_over, cap)
    done = jnp.logical_or(game_over, truncated)
    frames = jnp.where(done, self._first_frames(reset_screen), final)
    new_state = AtariState(ale=ale, ale_size=ale_size, frames=frames,
                           lives=jnp.where(done, reset_lives, lives),
                           time=jnp.where(done, 0, time))
    info = {"final_observation": final, "life_lost": jnp.logical_and(~done, lives < state.lives),
            "terminated": game_over, "truncated": truncated}
    return frames, new_state, reward, game_over, truncated, info

