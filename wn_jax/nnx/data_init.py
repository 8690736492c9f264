"""The paper's data-dependent init for Flax NNX: `data_init` and its layer base.

NNX modules hold their parameters from construction, so the data-dependent
init is a step of its own rather than Linen's `model.init`:

    model = Net(rngs=nnx.Rngs(0))      # v ~ N(0, 0.05), g = ||v||, b = 0
    data_init(model, init_batch)       # g = init_scale/sigma[t], b = -mu[t] g

`DataInitLayer` is the base of every NNX layer that takes part (weight norm,
the plain layers of `normal`, the batch norms); `data_init` switches them
into init mode for one forward pass. Holds no layer and no math of its own
(the statistics and g, b are `wn_jax.ops`').
"""

from __future__ import annotations

from typing import Any, ClassVar

from flax import nnx

from wn_jax import parameterizations


class DataInitLayer(nnx.Module):
  """A layer that takes part in `data_init`.

  `data_init` sets `_init_order` ('sequential' or 'independent') on every
  such layer for the duration of its forward pass; None otherwise.
  `sets_scale`: the layer sets a scale and bias from the init batch
  (weight norm, the `normal` plain layers), rather than only running in
  init mode (batch norms, which then leave their running averages alone).
  """

  sets_scale: ClassVar[bool] = False

  def _start_init_mode(self) -> None:
    self._init_order: str | None = None

  @property
  def initializing(self) -> bool:
    return self._init_order is not None


def data_init(model: nnx.Module, *inputs: Any, init_order: str = "sequential",
              **kwargs: Any) -> Any:
  """The paper's data-dependent init (section 2.2) of `model`, in place.

  Runs `model(*inputs, **kwargs)` once on the init batch. Every layer with
  a data-dependent init (`WeightNorm`, and `PlainDense`/`PlainConv` with
  `data_init=True`) sets, when the pass reaches it, per unit

      g = init_scale / sigma[t],   b = -mu[t] * init_scale / sigma[t],

  from its output t with kernel v/||v|| (plain layers: the kernel as is)
  and no bias. `init_order`:
    'sequential' (default; the authors' code and the Linen path): the layer
      passes on its initialised output g t + b, so every later layer takes
      its statistics on the outputs of the already-initialised layers.
    'independent': it passes on its un-initialised output (w = v, no bias),
      so all statistics come from one pass of the un-initialised network.
  Batch norms use the batch statistics of the pass as in training and do
  not update their running averages (as Linen's `init`).

  Works eagerly and under `nnx.jit` (e.g. `nnx.jit(data_init)(model, x)`);
  under jit with the init batch sharded over devices the statistics are
  those of the global batch.

  Returns:
    The model's output on the init batch (after the init).
  """
  parameterizations.check_init_order(init_order)
  targets = [node for _, node in nnx.iter_graph(model)
             if isinstance(node, DataInitLayer)]
  if not any(t.sets_scale for t in targets):
    raise ValueError(f"data_init: {type(model).__name__} has no layer with a "
                     "data-dependent init (WeightNorm, PlainDense, PlainConv).")
  for target in targets:
    target._init_order = init_order
  try:
    return model(*inputs, **kwargs)
  finally:
    for target in targets:
      target._init_order = None
