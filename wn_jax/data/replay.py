"""A uniform experience replay as preallocated device arrays (a ring buffer).

Pure functions of a `Replay` (a pytree of arrays), so a replay lives inside
a jitted step, in a checkpoint, and under `vmap` over sweep members.
Writes are `lax.dynamic_update_slice` at the write position (scatter
writes measured slower on XLA:CPU, ../shared/DQN_RECIPE.md section 4);
sampling draws rows uniformly from those written so far, never an
unwritten row.

Two layouts:
  `Replay` stores each transition whole, both observations (MinAtar). Its
    0/1 planes can be bit-packed (`packed=True`: 8 values a byte,
    `jnp.packbits`), so 100,000 MinAtar transitions take 15 MB, not 120.
  `FrameReplay` stores one frame per step (Atari): an observation of the
    `history` latest frames is rebuilt from consecutive rows, as in
    deep_q_rl's `ale_data_set`. 1,000,000 steps of 84x84 frames take 7 GB;
    whole transitions would take 56 GB.
`create`/`create_frames` make them; `add`, `sample_rows`, `gather` and
`sample` take either.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Transition(NamedTuple):
  """One transition (or a batch of them, with a leading axis):
  observation and next_observation [..., *obs_shape]; action int32;
  reward float32 (as stored: clipped by the caller); discount float32, 0
  where the episode terminated (not where it was truncated)."""
  observation: Array
  action: Array
  reward: Array
  discount: Array
  next_observation: Array


class Replay(NamedTuple):
  """The stored transitions [capacity, ...] (observations packed or as
  given), the next row to write and how many rows hold data."""
  observations: Array
  actions: Array
  rewards: Array
  discounts: Array
  next_observations: Array
  position: Array  # int32 []
  size: Array  # int32 []


def packed_size(obs_shape: tuple[int, ...]) -> int:
  """Bytes per bit-packed observation."""
  return math.ceil(math.prod(obs_shape) / 8)


def create(capacity: int, obs_shape: tuple[int, ...], obs_dtype=jnp.uint8,
           packed: bool = False) -> Replay:
  """An empty replay of `capacity` transitions."""
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1, got {capacity}.")
  shape = (capacity, packed_size(obs_shape)) if packed else (capacity, *obs_shape)
  dtype = jnp.uint8 if packed else obs_dtype
  return Replay(observations=jnp.zeros(shape, dtype), actions=jnp.zeros(capacity, jnp.int32),
                rewards=jnp.zeros(capacity, jnp.float32),
                discounts=jnp.zeros(capacity, jnp.float32),
                next_observations=jnp.zeros(shape, dtype),
                position=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def pack(observation: Array) -> Array:
  """0/1 values [*obs_shape] -> uint8 [packed_size] (nonzero counts as 1)."""
  return jnp.packbits(observation.reshape(-1) != 0)


def unpack(packed: Array, obs_shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """uint8 [..., packed_size] -> 0/1 values [..., *obs_shape] of `dtype`."""
  bits = jnp.unpackbits(packed, axis=-1, count=math.prod(obs_shape))
  return bits.reshape(*packed.shape[:-1], *obs_shape).astype(dtype)


class FrameReplay(NamedTuple):
  """One row per agent step [capacity, ...]: the newest frame of the
  observation the action was taken in, whether that observation starts an
  episode (`first`: the frames before it are not its history), the action,
  the reward and the discount; the next row to write, how many rows hold
  data, and whether the next row written starts an episode."""
  frames: Array  # [capacity, H, W] uint8
  first: Array  # [capacity] bool
  actions: Array
  rewards: Array
  discounts: Array
  position: Array  # int32 []
  size: Array  # int32 []
  next_first: Array  # bool []


def create_frames(capacity: int, frame_shape: tuple[int, int], history: int) -> FrameReplay:
  """An empty frame replay of `capacity` steps for observations [*frame_shape,
  history] (the frames stacked on the last axis, oldest first)."""
  if capacity < history + 1:
    raise ValueError(f"A frame replay needs capacity > history ({history}), got {capacity}.")
  return FrameReplay(frames=jnp.zeros((capacity, *frame_shape), jnp.uint8),
                     first=jnp.zeros(capacity, bool), actions=jnp.zeros(capacity, jnp.int32),
                     rewards=jnp.zeros(capacity, jnp.float32),
                     discounts=jnp.zeros(capacity, jnp.float32),
                     position=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32),
                     next_first=jnp.ones((), bool))


def is_packed(replay: Replay, obs_shape: tuple[int, ...]) -> bool:
  """Whether `replay` stores its observations bit-packed (`create(packed=True)`)."""
  return replay.observations.shape[1:] != tuple(obs_shape)


def _put(array: Array, i: Array, value) -> Array:
  """`array` with row `i` set to `value` (an in-place update under donation)."""
  value = jnp.asarray(value, array.dtype)
  return jax.lax.dynamic_update_slice(array, value.reshape(1, *array.shape[1:]),
                                      (i,) + (0,) * (array.ndim - 1))


def add(replay: Replay | FrameReplay, transition: Transition, obs_shape: tuple[int, ...],
        episode_end: Array | bool = False) -> Replay | FrameReplay:
  """`replay` with one transition written at `position` (overwriting the
  oldest once full). `episode_end`: the environment reset after it (game
  over or the cap; a `FrameReplay` starts the next row's history afresh)."""
  capacity = replay.actions.shape[0]
  i = replay.position
  put = functools.partial(_put, i=i)
  if isinstance(replay, FrameReplay):
    return FrameReplay(frames=put(replay.frames, value=transition.observation[..., -1]),
                       first=put(replay.first, value=replay.next_first),
                       actions=put(replay.actions, value=transition.action),
                       rewards=put(replay.rewards, value=transition.reward),
                       discounts=put(replay.discounts, value=transition.discount),
                       position=(i + 1) % capacity,
                       size=jnp.minimum(replay.size + 1, capacity),
                       next_first=jnp.asarray(episode_end, bool))
  packed = is_packed(replay, obs_shape)
  store = pack if packed else (lambda o: o.astype(replay.observations.dtype))
  return Replay(observations=put(replay.observations, value=store(transition.observation)),
                actions=put(replay.actions, value=transition.action),
                rewards=put(replay.rewards, value=transition.reward),
                discounts=put(replay.discounts, value=transition.discount),
                next_observations=put(replay.next_observations,
                                      value=store(transition.next_observation)),
                position=(i + 1) % capacity,
                size=jnp.minimum(replay.size + 1, capacity))


def sample_rows(replay: Replay | FrameReplay, key: Array, batch_size: int,
                history: int = 1) -> Array:
  """int32 [batch_size] rows drawn uniformly, with replacement, from those
  that hold a whole transition (row 0 alone while there is none): a
  `Replay`'s `size` rows written; a `FrameReplay`'s rows but the newest
  (its next frame is not written yet) and, once full, the oldest
  `history - 1` (their history is overwritten)."""
  if isinstance(replay, Replay):
    return jax.random.randint(key, (batch_size,), 0, jnp.maximum(replay.size, 1))
  capacity = replay.actions.shape[0]
  full = replay.size == capacity
  start = jnp.where(full, replay.position + history - 1, 0)
  count = jnp.where(full, capacity - history, replay.size - 1)
  offsets = jax.random.randint(key, (batch_size,), 0, jnp.maximum(count, 1))
  return (start + offsets) % capacity


def stack_rows(replay: FrameReplay, rows: Array, history: int) -> Array:
  """int32 [B, history]: the rows whose frames make the observation of
  each row of `rows` [B], oldest first; before an episode's first row its
  first frame is repeated (what the environment shows at a reset)."""
  capacity = replay.actions.shape[0]
  columns = [rows]
  for _ in range(history - 1):
    newest = columns[-1]
    columns.append(jnp.where(replay.first[newest], newest, (newest - 1) % capacity))
  return jnp.stack(columns[::-1], axis=-1)


def gather(replay: Replay | FrameReplay, rows: Array, obs_shape: tuple[int, ...],
           obs_dtype=jnp.float32) -> Transition:
  """The transitions at `rows` [B], observations unpacked to `obs_dtype`
  (a `FrameReplay`'s [B, H, W, history] rebuilt from its rows)."""
  if isinstance(replay, FrameReplay):
    history = obs_shape[-1]
    capacity = replay.actions.shape[0]
    def observations(rows):
      frames = replay.frames[stack_rows(replay, rows, history)]  # [B, history, H, W]
      return jnp.moveaxis(frames, 1, -1).astype(obs_dtype)
    return Transition(observation=observations(rows), action=replay.actions[rows],
                      reward=replay.rewards[rows], discount=replay.discounts[rows],
                      next_observation=observations((rows + 1) % capacity))
  packed = is_packed(replay, obs_shape)
  def observations(array):
    taken = array[rows]
    return unpack(taken, obs_shape, obs_dtype) if packed else taken.astype(obs_dtype)
  return Transition(observation=observations(replay.observations),
                    action=replay.actions[rows], reward=replay.rewards[rows],
                    discount=replay.discounts[rows],
                    next_observation=observations(replay.next_observations))


def sample(replay: Replay, key: Array, batch_size: int, obs_shape: tuple[int, ...],
           obs_dtype=jnp.float32) -> Transition:
  """A uniform minibatch of `batch_size` transitions."""
  history = obs_shape[-1] if isinstance(replay, FrameReplay) else 1
  return gather(replay, sample_rows(replay, key, batch_size, history), obs_shape, obs_dtype)


def nbytes(replay: Replay) -> int:
  """The replay's size in bytes."""
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in replay)
