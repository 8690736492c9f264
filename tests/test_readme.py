"""The README's "use the layers in your own model" example runs as written."""

import os
import re

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow  # 7 s on the 2-core CPU
def test_readme_layers_example_runs(capsys):
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    readme = f.read()
  example = re.search(r"## Use the layers.*?```python\n(.*?)```", readme, re.S).group(1)
  exec(compile(example, "README.md", "exec"), {})
  assert "'v': (3, 3, 3, 32)" in capsys.readouterr().out


@pytest.mark.slow  # 15 s on the 2-core CPU
def test_readme_weight_norm_fold_export_example_runs(capsys):
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    readme = f.read()
  example = re.search(r"## Weight-normalize any layer.*?```python\n(.*?)```", readme,
                      re.S).group(1)
  exec(compile(example, "README.md", "exec"), {})
  out = capsys.readouterr().out
  assert "'v': (5, 2, 64)" in out
  assert "same logits: True" in out
