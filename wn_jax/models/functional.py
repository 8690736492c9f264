"""The NNX CifarNet behind the functional interface of the training loop.

`wn_jax.trainer.train` keeps its state as pure pytrees (params, batch statistics)
and jits pure step functions that call `model.init` and `model.apply`.
`FunctionalCifarNet` gives the NNX network that interface, the split/merge
pattern of NNX's functional API: the graph is split off once, outside jit
(`nnx.split`), and each step merges it with the state it is given
(`nnx.merge`), runs the stateful module, and hands the new batch statistics
back as data. The variables keep the Linen layout (`convert.to_linen`), so
the training state, its checkpoints and everything that reads them are the
same for `config.model.api='linen'` and `'nnx'`, and a checkpoint of one
resumes on the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from wn_jax.nnx import convert, models
from wn_jax.nnx.data_init import data_init

Array = jax.Array
PyTree = Any


class FunctionalCifarNet:
  """`models.CifarNet` (NNX) with Linen's `init`/`apply`/`clone` interface.

  Attributes are the NNX CifarNet's constructor arguments, plus
  `init_order` of the data-dependent init.

  `init(rngs, x, train=True)` builds the network, draws every v / kernel
  from `rngs['params']` as the Linen CifarNet's `init` does
  (`convert.draw_as_linen`), runs `data_init` on x with the
  'noise' and 'dropout' keys (when `data_init`), and returns the variables
  in the Linen layout. `apply(variables, x, train=..., rngs=...,
  mutable=[...])` is Linen's `apply`: the logits, and with `mutable` the
  updated collections.
  """

  def __init__(self, *, init_order: str = "sequential", **kwargs: Any):
    self.kwargs = dict(kwargs)
    self.init_order = init_order
    self._split = None

  @classmethod
  def like(cls, linen_model: Any) -> FunctionalCifarNet:
    """The NNX twin of a Linen `wn_jax.models.CifarNet` (same fields)."""
    fields = ("num_classes", "width", "parameterization", "data_init", "init_scale",
              "input_noise", "dropout_rate", "leaky_relu_slope", "bn_momentum",
              "bn_epsilon", "conv_weight_grad", "dtype")
    return cls(init_order=linen_model.init_order,
               **{name: getattr(linen_model, name) for name in fields})

  def __getattr__(self, name: str) -> Any:
    kwargs = self.__dict__.get("kwargs", {})
    if name in kwargs:
      return kwargs[name]
    raise AttributeError(f"FunctionalCifarNet has no attribute {name!r}.")

  def clone(self, **updates: Any) -> FunctionalCifarNet:
    kwargs = {**self.kwargs, "init_order": self.init_order, **updates}
    return FunctionalCifarNet(**kwargs)

  def _build(self, rngs: nnx.Rngs) -> models.CifarNet:
    return models.CifarNet(**self.kwargs, rngs=rngs)

  def init(self, rngs: Mapping[str, Array], x: Array, *, train: bool = True
           ) -> dict[str, PyTree]:
    model = self._build(nnx.Rngs(0))
    convert.draw_as_linen(model, rngs["params"])
    if self.kwargs.get("data_init", True):
      data_init(model, x, train=train, init_order=self.init_order,
                rngs={"noise": rngs["noise"], "dropout": rngs["dropout"]})
    return convert.to_linen(model)

  def apply(self, variables: Mapping[str, PyTree], x: Array, *, train: bool,
            rngs: Mapping[str, Array] | None = None,
            mutable: Sequence[str] | bool = False) -> Any:
    if self._split is None:  # the graph, split off once (abstractly)
      self._split = nnx.split(nnx.eval_shape(lambda: self._build(nnx.Rngs(0))))
    graphdef, abstract_state = self._split
    # Fresh Variables for this trace (the cached ones are never mutated),
    # then the given values.
    model = nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, abstract_state))
    convert.from_linen(model, variables)
    logits = model(x, train=train, rngs=rngs)
    if not mutable:
      return logits
    new = convert.to_linen(model)
    collections = list(new) if mutable is True else mutable
    return logits, {c: new[c] for c in collections if c in new}
