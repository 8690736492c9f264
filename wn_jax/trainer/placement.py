"""Devices and hosts: the mesh, global arrays, fetching, multi-host start-up.

A mesh (members, data) with every device on `data`: each batch is sharded
along `data` and the members are replicated (XLA partitions the vmapped
1x1 convs wrongly when they are split over devices: measured with jax
0.10.2 on CPU, see `create_mesh`); one jitted step, no pmap. Batch
statistics, the data-dependent init and mean-only BN are therefore those
of each member's global batch. `put_global` and `fetch` are right on one
host and on many. Nothing here knows the model or the data.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Array = jax.Array
PyTree = Any

MESH_AXES = ("members", "data")


def initialize_distributed(distributed: ml_collections.ConfigDict) -> None:
  """Joins a multi-host cluster with `jax.distributed.initialize` if enabled.

  Each host then runs the same program; `jax.devices()` spans all hosts and
  every host holds the (small) data set and feeds its own devices. On CPU
  hosts the collectives go through gloo.
  """
  if not distributed.enabled:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=distributed.coordinator_address or None,
      num_processes=distributed.num_processes or None,
      process_id=distributed.process_id if distributed.process_id >= 0 else None)


def create_mesh() -> Mesh:
  """The (members, data) mesh: every device along `data`.

  The members stay replicated. Splitting them over devices (a `members`
  axis longer than 1) was measured to compute wrong results: XLA (jax
  0.10.2, CPU) partitions the grouped convolutions that `vmap` makes of
  convs it turns into dots (1x1 kernels, or a kernel covering its whole
  input) wrongly when their groups are sharded.
  """
  return Mesh(np.asarray(jax.devices()).reshape(1, -1), MESH_AXES)


def mesh_sharding(mesh: Mesh, *spec) -> NamedSharding:
  """`NamedSharding(mesh, PartitionSpec(*spec))`; no spec: replicated."""
  return NamedSharding(mesh, PartitionSpec(*spec))


def put_global(host_array: np.ndarray, sharding: NamedSharding) -> Array:
  """Places an array that every process holds whole, in any sharding.

  Each process supplies the blocks of its own devices (replicated, sharded
  or partly both), so this is right on one host and on many.
  """
  return jax.make_array_from_callback(host_array.shape, sharding,
                                      lambda index: host_array[index])


def fetch(tree: PyTree) -> PyTree:
  """Device arrays to host numpy, also those spread over many hosts."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
