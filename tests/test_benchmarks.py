"""Tests of `benchmarks/step_time.py` and `benchmarks/atari_step_time.py`: the
reports' numbers are consistent with each other and the analytic FLOP count
equals a hand count."""

import json
import os
import re
import statistics
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


# Conv/dense multiply-adds per 32x32x3 example, counted by hand, at width w
# (channels w and 2w): 3 convs at 32x32 (3->w, w->w, w->w), 3 at 16x16
# (w->2w, 2w->2w, 2w->2w), a VALID 3x3 at 8x8 -> 6x6, two 1x1 at 6x6, dense 2w->10.
# w = 4: 9216 * (12 + 16 + 16) + 2304 * (32 + 64 + 64) + 324 * 64 + 72 * 64 + 80
#      = 405504 + 368640 + 20736 + 4608 + 80 = 799568.
# w = 6: 9216 * (18 + 36 + 36) + 2304 * (72 + 144 + 144) + 324 * 144 + 72 * 144 + 120
#      = 829440 + 829440 + 46656 + 10368 + 120 = 1716024.
FORWARD_MACS = {4: 799_568, 6: 1_716_024}
FIRST_LAYER_MACS = {4: 9216 * 12, 6: 9216 * 18}  # its input gradient is never computed


@pytest.mark.slow  # the benchmark end to end: compiles init and step twice
def test_step_time_report_is_consistent(capsys, tmp_path):
  # Tiny everything: the numbers in the table must be the ones measured,
  # and derived from each other as the header says.
  report = step_time.main([
      "--width", "4", "--batch-size", "10", "--init-batch-size", "10",
      "--reps", "1", "--warmup", "1", "--matmul-size", "64",
      "--parameterizations", "normal,wn", "--conv-weight-grad", "xla",
      "--no-torch", "--json", str(tmp_path / "out.json")])
  out = capsys.readouterr().out

  assert "--width 4" in out and "device kind:" in out
  assert "Skipped (--no-torch)." in out
  assert [r["parameterization"] for r in report["rows"]] == ["normal", "wn"]
  assert report["torch"]["rows"] == []
  with open(tmp_path / "out.json") as f:
    assert json.load(f)["rows"] == json.loads(json.dumps(report["rows"]))
  normal, wn = report["rows"]
  peak = report["matmul_peak_flops"]["float32"]
  for row in report["rows"]:
    cells = _table_row(out, row["parameterization"])
    assert len(cells) == 12
    assert len(row["step_times_s"]) == 1
    assert row["step_s"] == statistics.median(row["step_times_s"])
    # 2 FLOPs per MAC, forward + weight grad + input grad, batch 10.
    assert row["analytic_step_flops"] == 10 * 2 * (3 * FORWARD_MACS[4] - FIRST_LAYER_MACS[4])
    assert row["analytic_layers"] == 10
    # Every number in the row as printed, to the printed digits.
    def printed(cell, value, digits):
      np.testing.assert_allclose(_number(cell), value, rtol=0, atol=0.5001 * 10**-digits)
    printed(cells[1], row["step_s"] * 1e3, 2)
    printed(cells[2], 10 / row["step_s"], 1)
    printed(cells[3], row["step_s"] / normal["step_s"], 3)
    printed(cells[10], row["analytic_step_flops"] / row["step_s"] / 1e9, 1)
    printed(cells[11], 100 * row["analytic_step_flops"] / row["step_s"] / peak, 1)
  np.testing.assert_allclose(wn["vs_normal"], wn["step_s"] / normal["step_s"], rtol=1e-12)


@pytest.mark.parametrize("parameterization", ["normal", "wn", "bn"])
def test_analytic_flops_match_a_hand_count(parameterization):
  import jax

  from configs import cifar
  from wn_jax.tasks import classification

  width = 6
  config = cifar.get_config(parameterization)
  config.model.width = width
  config.model.data_init = False  # shapes only
  model = classification.create_model(config, {"num_classes": 10})
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0), "noise": jax.random.key(1),
                          "dropout": jax.random.key(2)},
                         np.zeros((2, 32, 32, 3), np.float32), train=True))
  flops = step_time.analytic_flops(model, variables)
  assert flops["num_layers"] == 10
  assert flops["forward"] == 3_432_048  # 2 * 1716024
  assert flops["train_step"] == 9_964_368  # 3 * 3432048 - 2 * 165888


@pytest.mark.slow  # compiles the Nature network's DQN step
@pytest.mark.skipif(__import__("importlib").util.find_spec("ale_py") is None,
                    reason="needs the rl extra: pip install -e '.[test,rl]'")
def test_atari_step_time_report_is_consistent(capsys, tmp_path):
  import atari_step_time  # noqa: PLC0415
  result = atari_step_time.main(
      ["--updates", "2", "--test-steps", "20", "--emulator-steps", "20", "--reps", "2",
       "--replay-start", "100", "--replay-capacity", "300", "--batch-size", "8",
       "--json", str(tmp_path / "atari.json")])
  table = capsys.readouterr().out
  update_s = statistics.median(result["update_s"])
  agent_steps = _number(_table_row(table, "training: agent steps/s")[1])
  assert agent_steps == pytest.approx(4 / update_s, rel=1e-3, abs=0.06)
  assert _number(_table_row(table, "training: frames/s")[1]) == pytest.approx(
      16 / update_s, rel=1e-3, abs=0.06)
  hours = 200 * (250_000 * update_s / 4 + 125_000 * statistics.median(result["test_s"])) / 3600
  assert result["paper_hours"] == pytest.approx(hours, rel=1e-9)
  assert json.load(open(tmp_path / "atari.json"))["paper_hours"] == result["paper_hours"]
