"""What every experiment's config shares: variant parsing, and the loop's
sections that do not depend on the experiment (multi-host, sweeps)."""

import ml_collections

PARAMETERIZATIONS = ("normal", "wn", "bn", "mobn", "wn_mobn")


def parse_variants(arg: str | None, options: tuple[str, ...],
                   example: str) -> tuple[list[str], str | None]:
  """The comma-separated variants of `arg` and the one parameterization
  among them (None: the config's default). ValueError for an unknown variant
  or two parameterizations; `example` shows a valid spelling."""
  variants = [a.strip() for a in (arg or "").split(",") if a.strip()]
  unknown = [v for v in variants if v not in PARAMETERIZATIONS + options]
  if unknown:
    raise ValueError(
        f"Unknown config variant(s) {unknown}; valid ones are "
        f"{', '.join(PARAMETERIZATIONS + options)} (comma-separated, e.g. {example}).")
  chosen = [v for v in variants if v in PARAMETERIZATIONS]
  if len(chosen) > 1:
    raise ValueError(f"Pick one parameterization, got {chosen}.")
  return variants, (chosen[0] if chosen else None)


def add_distributed_and_sweep(config: ml_collections.ConfigDict) -> None:
  """config.distributed (multi-host) and config.sweep (members), the loop's."""
  # Multi-host: jax.distributed.initialize(); '' / 0 / -1 = auto-detect
  # (SLURM, TPU pods, ...), else set all three on every host.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  config.distributed.coordinator_address = ""  # e.g. '10.0.0.1:1234'
  config.distributed.num_processes = 0
  config.distributed.process_id = -1
  # Many members in one program (wn_jax/trainer/sweep.py): per-member values, zipped;
  # empty = the base value. E.g. --config.sweep.learning_rate='(3e-4, 1e-3)'.
  config.sweep = ml_collections.ConfigDict()
  config.sweep.seed = ()
  config.sweep.learning_rate = ()
  config.sweep.init_scale = ()
  config.sweep.data_init = ()
  # How one program runs its members: 'vmap' (batched: fills a GPU),
  # 'unroll' (one copy per member: XLA:CPU's grouped convs are slower),
  # 'auto' = unroll on CPU, vmap elsewhere.
  config.sweep.member_loop = "auto"
