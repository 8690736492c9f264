"""The paper's CIFAR-10 network in PyTorch, as a speed reference for wn_jax.

`build_net(width, weight_norm)` is the network of `wn_jax.models.CifarNet`
(Gaussian noise 0.15 -> 3 x [3x3 conv `width`, lReLU 0.1] -> 2x2 max-pool
-> dropout 0.5 -> 3 x [3x3 conv 2*`width`, lReLU] -> max-pool -> dropout ->
3x3 conv 2*`width` VALID -> 2 x [1x1 conv 2*`width`] -> global average pool
-> dense 10), with plain layers (`normal`) or with
`torch.nn.utils.parametrizations.weight_norm` on every conv and the dense
layer (`wn`: `w = g v/||v||`, one `g` per output channel). What it leaves
out on purpose, since it costs next to nothing per step: the
data-dependent init (torch's weight norm starts at `g = ||v||`), and the
frozen per-channel scale that wn_jax's `normal` layers carry.

`time_train_step(...)` times eager Adam steps (forward, backward, update)
the way `benchmarks/step_time.py` times the jitted JAX step: the median
over `reps` after `warmup`, synchronising each step.

torch is an optional extra (`pip install -e '.[bench]'`); importing this
module needs it.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.nn.utils import parametrizations


class GaussianNoise(nn.Module):
  """Adds N(0, std^2) noise in training mode only."""

  def __init__(self, std: float):
    super().__init__()
    self.std = std

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.training and self.std > 0:
      return x + self.std * torch.randn_like(x)
    return x


def build_net(width: int = 96, num_classes: int = 10, weight_norm: bool = False,
              input_noise: float = 0.15, dropout_rate: float = 0.5,
              leaky_relu_slope: float = 0.1) -> nn.Sequential:
  """The CIFAR-10 network; input [batch, 3, 32, 32] (NCHW), logits [batch, 10].

  With `weight_norm=True` every conv and the linear layer is wrapped by
  `parametrizations.weight_norm(..., dim=0)`: `g` has one entry per output
  channel (shape [out, 1, 1, 1] for a conv, [out, 1] for the linear layer)
  and `||v||` is taken over the other axes, as in the paper.
  """
  def conv(cin, cout, kernel, padding):
    layer = nn.Conv2d(cin, cout, kernel, padding=padding)
    return parametrizations.weight_norm(layer, dim=0) if weight_norm else layer

  def lrelu():
    return nn.LeakyReLU(leaky_relu_slope)

  w1, w2 = width, 2 * width
  blocks = [GaussianNoise(input_noise)]
  for cin in (3, w1, w1):
    blocks += [conv(cin, w1, 3, 1), lrelu()]
  blocks += [nn.MaxPool2d(2), nn.Dropout(dropout_rate)]
  for cin in (w1, w2, w2):
    blocks += [conv(cin, w2, 3, 1), lrelu()]
  blocks += [nn.MaxPool2d(2), nn.Dropout(dropout_rate)]
  blocks += [conv(w2, w2, 3, 0), lrelu()]
  blocks += [conv(w2, w2, 1, 0), lrelu(), conv(w2, w2, 1, 0), lrelu()]
  dense = nn.Linear(w2, num_classes)
  if weight_norm:
    dense = parametrizations.weight_norm(dense, dim=0)
  blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), dense]
  return nn.Sequential(*blocks)


def _synchronize(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def time_train_step(width: int, weight_norm: bool, batch_size: int, reps: int,
                    warmup: int, device: str = "cpu", dtype: str = "float32",
                    image_size: int = 32, seed: int = 0,
                    compile_mode: str | None = None) -> dict[str, float]:
  """Median seconds of one Adam step of `build_net` on random input.

  The net and its input are in `channels_last` memory format (NHWC in
  memory, the layout JAX uses); `dtype='bfloat16'` runs under
  `torch.autocast` with float32 parameters, like wn_jax's `model.dtype`.
  `compile_mode` (e.g. 'max-autotune'): what a PyTorch user tuning for
  speed runs: `torch.compile(net, mode=compile_mode)`, TF32 allowed for
  float32 matmuls and convs, and the fused Adam on CUDA; None: eager.
  Returns {'step_s': median, 'images_per_s': ..., 'times_s': [...]}.
  """
  torch.manual_seed(seed)
  device = torch.device(device)
  net = build_net(width, weight_norm=weight_norm).to(
      device=device, memory_format=torch.channels_last)
  net.train()
  fused = compile_mode is not None and device.type == "cuda"
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused or None)
  if compile_mode is not None:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    net = torch.compile(net, mode=compile_mode)
  images = torch.randn(batch_size, 3, image_size, image_size, device=device)
  images = images.contiguous(memory_format=torch.channels_last)
  labels = torch.randint(0, 10, (batch_size,), device=device)
  autocast = dtype == "bfloat16"

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
      logits = net(images)
    loss = nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    optimizer.step()
    return loss

  times = []
  for i in range(warmup + reps):
    start = time.perf_counter()
    step()
    _synchronize(device)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  return {"step_s": step_s, "images_per_s": batch_size / step_s, "times_s": times}
