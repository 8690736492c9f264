"""A uniform experience replay as preallocated device arrays (a ring buffer).

Pure functions of a `Replay` (a pytree of arrays), so a replay lives inside
a jitted step, in a checkpoint, and under `vmap` over sweep members.
Writes are `lax.dynamic_update_slice` at the write position (scatter
writes measured slower on XLA:CPU, ../shared/DQN_RECIPE.md section 4);
sampling draws rows uniformly from those written so far, never an
unwritten row.

Observations of 0/1 planes (MinAtar) can be stored bit-packed
(`packed=True`: 8 values a byte, `jnp.packbits`), so a replay of 100,000
MinAtar transitions with both observations is 15 MB instead of 120.
"""

from __future__ import annotations

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


def is_packed(replay: Replay, obs_shape: tuple[int, ...]) -> bool:
  """Whether `replay` stores its observations bit-packed (`create(packed=True)`)."""
  return replay.observations.shape[1:] != tuple(obs_shape)


def add(replay: Replay, transition: Transition, obs_shape: tuple[int, ...]) -> Replay:
  """`replay` with one transition written at `position` (overwriting the
  oldest once full)."""
  capacity = replay.actions.shape[0]
  packed = is_packed(replay, obs_shape)
  store = pack if packed else (lambda o: o.astype(replay.observations.dtype))
  i = replay.position

  def put(array, value):
    value = jnp.asarray(value, array.dtype)
    return jax.lax.dynamic_update_slice(array, value.reshape(1, *array.shape[1:]),
                                        (i,) + (0,) * (array.ndim - 1))

  return Replay(observations=put(replay.observations, store(transition.observation)),
                actions=put(replay.actions, transition.action),
                rewards=put(replay.rewards, transition.reward),
                discounts=put(replay.discounts, transition.discount),
                next_observations=put(replay.next_observations,
                                      store(transition.next_observation)),
                position=(i + 1) % capacity,
                size=jnp.minimum(replay.size + 1, capacity))


def sample_rows(replay: Replay, key: Array, batch_size: int) -> Array:
  """int32 [batch_size] rows drawn uniformly, with replacement, from the
  `size` rows written (row 0 alone while the replay is empty)."""
  return jax.random.randint(key, (batch_size,), 0, jnp.maximum(replay.size, 1))


def gather(replay: Replay, rows: Array, obs_shape: tuple[int, ...],
           obs_dtype=jnp.float32) -> Transition:
  """The transitions at `rows` [B], observations unpacked to `obs_dtype`."""
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
  return gather(replay, sample_rows(replay, key, batch_size), obs_shape, obs_dtype)


def nbytes(replay: Replay) -> int:
  """The replay's size in bytes."""
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in replay)
