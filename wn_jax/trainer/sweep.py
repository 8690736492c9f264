"""Sweep members: many runs of one network trained as one program.

`config.sweep` lists per-member values of what may differ inside one
compiled program; the members of a launch share everything else (the
parameterization, the network's shape, the data, the schedule's length):

    config.sweep.seed           init, noise/dropout keys and data order
    config.sweep.learning_rate  the base learning rate (optimizer.learning_rate)
    config.sweep.init_scale     model.init_scale of the data-dependent init
    config.sweep.data_init      model.data_init

Each is a tuple; the non-empty ones are zipped (they must have equal
lengths), the empty ones take the base config's value. With all four empty
the run is a plain run: one member, recorded in the workdir itself. A sweep
records each member in `<workdir>/<member name>/` (its effective config as
`config.json`, its `metrics.jsonl`), named as `run_name` names runs, so
the plotting tools read a member like any run.

    python train.py --config configs/cifar.py:wn,quick --workdir runs/wn_lrs \\
        --config.sweep.learning_rate='(3e-4, 1e-3, 3e-3, 1e-2)'

This module only reads configs (no JAX): the launcher imports it too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import ml_collections

# Sweep key -> the config key it sets in each member's effective config.
MEMBER_KEYS = {
    "seed": "seed",
    "learning_rate": "optimizer.learning_rate",
    "init_scale": "model.init_scale",
    "data_init": "model.data_init",
}


def run_name(parameterization: str, learning_rate: float, seed: int,
             data_init: bool = True, init_scale: float = 1.0,
             normal_weights: str = "scaled") -> str:
  """The name of a run's record folder, e.g. 'wn_lr0.001_s0'.

  'wn_nodatainit_lr0.001_s0' without the data-dependent init;
  'normal_direct_lr0.001_s0' for the direct reading of a data-initialised
  `normal` or `mobn` (`wn_jax.parameterizations.NORMAL_WEIGHTS`);
  '..._is0.5' when init_scale is not 1.
  """
  direct = (normal_weights == "direct" and data_init
            and parameterization in ("normal", "mobn"))
  return (f"{parameterization}{'' if data_init else '_nodatainit'}"
          f"{'_direct' if direct else ''}"
          f"_lr{learning_rate:g}_s{seed}"
          f"{'' if init_scale == 1 else f'_is{init_scale:g}'}")


def _get(config: ml_collections.ConfigDict, dotted: str):
  section, _, name = dotted.rpartition(".")
  return (config[section] if section else config)[name]


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  section, _, name = dotted.rpartition(".")
  (config[section] if section else config)[name] = value


def is_sweep(config: ml_collections.ConfigDict) -> bool:
  """True if any per-member list in `config.sweep` is non-empty."""
  return any(len(config.sweep[key]) for key in MEMBER_KEYS)


def _check_values(key: str, values: Sequence) -> None:
  for value in values:
    if key == "seed":
      ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif key == "data_init":
      ok = isinstance(value, bool)
    else:
      ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
    if not ok:
      kind = {"seed": "integers", "data_init": "True/False"}.get(key, "positive numbers")
      raise ValueError(f"config.sweep.{key} must hold {kind}, got {tuple(values)!r}.")


def member_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """Each member's effective config: the base config with its values set.

  The returned configs have an empty `sweep` section, so each is exactly
  the config of the member trained alone. Raises ValueError for lists of
  different lengths, bad values or two identical members.
  """
  lengths = {key: len(config.sweep[key]) for key in MEMBER_KEYS if len(config.sweep[key])}
  if len(set(lengths.values())) > 1:
    listed = ", ".join(f"config.sweep.{k} has {n}" for k, n in lengths.items())
    raise ValueError(f"Sweep lists differ in length ({listed} values); members are "
                     "zipped, so give every non-empty list the same length.")
  for key in lengths:
    _check_values(key, config.sweep[key])
  num_members = next(iter(lengths.values()), 1)
  members = []
  for index in range(num_members):
    member = ml_collections.ConfigDict(config.to_dict())
    for key, target in MEMBER_KEYS.items():
      if key in lengths:
        value = config.sweep[key][index]
        _set(member, target, type(_get(config, target))(value))
      member.sweep[key] = ()
    members.append(member)
  names = [member_name(m) for m in members]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"The sweep has identical members {duplicates}; each member needs "
                     "its own seed, learning rate, init_scale or data_init.")
  return members


def member_name(member: ml_collections.ConfigDict) -> str:
  """`run_name` of a member's effective config."""
  return run_name(member.model.parameterization, member.optimizer.learning_rate,
                  member.seed, member.model.data_init, member.model.init_scale,
                  member.model.get("normal_weights", "scaled"))
