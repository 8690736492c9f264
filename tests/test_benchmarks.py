"""Smoke tests of `benchmarks/step_time.py` and the PyTorch reference network."""

import os
import re
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import step_time  # noqa: E402


def _table_row(table: str, name: str) -> list[str]:
  for line in table.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if cells[0] == name and re.fullmatch(r"[\d,.]+", cells[1]):
      return cells
  raise AssertionError(f"no row for {name!r} in:\n{table}")


def _number(cell: str) -> float:
  """'1,234.5', '1.000x' or '12.3 (!)' -> the number."""
  return float(re.match(r"[\d,.]+", cell).group().replace(",", ""))


def test_step_time_reports_every_parameterization(capsys, tmp_path):
  # Tiny everything: the point is that the script runs end to end and its
  # numbers are filled in, not what they are.
  report = step_time.main([
      "--width", "4", "--batch-size", "10", "--init-batch-size", "10",
      "--reps", "1", "--warmup", "1", "--matmul-size", "64",
      "--parameterizations", "normal,wn", "--conv-weight-grad", "xla",
      "--no-torch", "--json", str(tmp_path / "out.json")])
  out = capsys.readouterr().out

  assert "--width 4" in out and "device kind:" in out
  assert "Skipped (--no-torch)." in out
  for name in ("normal", "wn"):
    cells = _table_row(out, name)
    # step ms, images/s, vs normal, compile, init first/run, fwd compile/run,
    # GFLOP/s (XLA), GFLOP/s (analytic), % of peak.
    assert len(cells) == 12
    for cell in cells[1:]:
      if cell != "n/a":  # the XLA count, where a backend gives none
        assert _number(cell) > 0, (name, cell)
  assert _number(_table_row(out, "normal")[3]) == 1.0
  assert os.path.exists(tmp_path / "out.json")
  assert [r["parameterization"] for r in report["rows"]] == ["normal", "wn"]
  assert report["torch"]["rows"] == []


def _hand_counted_forward_flops(width: int) -> float:
  """Conv/dense FLOPs per 32x32x3 example, written out layer by layer."""
  w1, w2 = width, 2 * width
  macs = (32 * 32 * 9 * (3 * w1 + w1 * w1 + w1 * w1)      # 3 convs at 32x32
          + 16 * 16 * 9 * (w1 * w2 + w2 * w2 + w2 * w2)   # 3 convs at 16x16
          + 6 * 6 * 9 * w2 * w2                           # VALID 3x3: 8x8 -> 6x6
          + 2 * 6 * 6 * w2 * w2                           # two 1x1 convs
          + w2 * 10)                                      # dense
  return 2.0 * macs


@pytest.mark.parametrize("parameterization", ["normal", "wn", "bn"])
def test_analytic_flops_match_a_hand_count(parameterization):
  import jax

  from configs import cifar
  from wn_jax import train

  width = 6
  config = cifar.get_config(parameterization)
  config.model.width = width
  config.model.data_init = False  # shapes only
  model = train.create_model(config, 10)
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0), "noise": jax.random.key(1),
                          "dropout": jax.random.key(2)},
                         np.zeros((2, 32, 32, 3), np.float32), train=True))
  flops = step_time.analytic_flops(model, variables)
  expected = _hand_counted_forward_flops(width)
  assert flops["num_layers"] == 10
  np.testing.assert_allclose(flops["forward"], expected, rtol=0)
  first_layer = 2.0 * 32 * 32 * 9 * 3 * width
  np.testing.assert_allclose(flops["train_step"], 3 * expected - first_layer, rtol=0)


def _plain_and_weight_normed(width=4, seed=0):
  torch = pytest.importorskip("torch")
  import torch_reference
  torch.manual_seed(seed)
  plain = torch_reference.build_net(width, weight_norm=False).eval()
  wn = torch_reference.build_net(width, weight_norm=True).eval()
  return torch, plain, wn


def _layers(net, torch):
  return [m for m in net.modules()
          if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def test_torch_wn_net_has_g_per_output_channel():
  torch, _, wn = _plain_and_weight_normed()
  layers = _layers(wn, torch)
  assert len(layers) == 10  # 9 convs + the dense layer
  for layer in layers:
    assert torch.nn.utils.parametrize.is_parametrized(layer, "weight")
    g = layer.parametrizations.weight.original0
    v = layer.parametrizations.weight.original1
    out_channels = v.shape[0]
    assert g.shape == (out_channels,) + (1,) * (v.ndim - 1)
    # w = g v / ||v||, the norm per output channel over every other axis.
    v_norm = v.detach().flatten(1).norm(dim=1).reshape(g.shape)
    torch.testing.assert_close(layer.weight, g * v / v_norm)


def test_torch_wn_net_matches_plain_net_when_g_is_norm_of_v():
  torch, plain, wn = _plain_and_weight_normed(seed=0)
  torch.manual_seed(1)  # weights (and biases) unlike those wn started with
  for p in plain.parameters():
    torch.nn.init.normal_(p, std=0.1)
  with torch.no_grad():
    for plain_layer, wn_layer in zip(_layers(plain, torch), _layers(wn, torch)):
      params = wn_layer.parametrizations.weight
      v = plain_layer.weight.detach()
      params.original1.copy_(v)
      params.original0.copy_(v.flatten(1).norm(dim=1).reshape(params.original0.shape))
      wn_layer.bias.copy_(plain_layer.bias)
    x = torch.randn(3, 3, 32, 32)
    expected = plain(x)
    torch.testing.assert_close(wn(x), expected, rtol=1e-5, atol=1e-5)
    # And g, not ||v||, sets the scale: doubling v changes nothing.
    for wn_layer in _layers(wn, torch):
      wn_layer.parametrizations.weight.original1.mul_(2.0)
    torch.testing.assert_close(wn(x), expected, rtol=1e-5, atol=1e-5)
