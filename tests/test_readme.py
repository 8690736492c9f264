"""Every ```python block of README.md and docs/LAYERS.md runs as written, in a
fresh namespace; every link of README and docs/ resolves inside the repository.

A block is named by the `## ` section it stands in (with `[2]`, `[3]`, ...
for a later block in the same section). What a block prints is checked
against what README shows: the block's comments (`EXPECTED_OUTPUT`), and
a "prints" block right after it, line by line (numbers to 2e-3, so other
jax versions and CPUs pass).
"""

import itertools
import os
import re

import numpy as np
import pytest
from conftest import REPO_ROOT

_BLOCK = re.compile(r"^## ([^\n]*)$|^```python\n(.*?)^```$(?:\n+prints\n+```\n(.*?)^```$)?",
                    re.M | re.S)
_NUMBER = re.compile(r"-?\d+\.\d+")


# The pages whose python blocks run here.
PAGES = ("README.md", os.path.join("docs", "LAYERS.md"))


def readme_python_blocks() -> list[tuple[str, str, str]]:
  """(name, code, shown output or '') of every ```python block of PAGES."""
  readme = ""
  for page in PAGES:
    with open(os.path.join(REPO_ROOT, page)) as f:
      readme += f.read() + "\n"
  blocks, count, section = [], {}, "top"
  for heading, code, shown in _BLOCK.findall(readme):
    if heading:
      section = heading
      continue
    count[section] = count.get(section, 0) + 1
    name = section if count[section] == 1 else f"{section} [{count[section]}]"
    blocks.append((name, code, shown))
  return blocks


# Blocks whose compiles take over ~2 s on the 2-core CPU, left out of the
# fast tier; measured with the tests' XLA cache cold / warm.
SLOW = {
    "Use the layers in your own model": "5 s / 1.6 s",
    "Weight-normalize any layer, fold and export": "16 s / 2 s",
    "Flax NNX": "4-6 s / 1 s",
}

# What a block must print, as its comments in README show.
EXPECTED_OUTPUT = {
    "Use the layers in your own model": ["'v': (3, 3, 3, 32)", "folded: True"],
    "Weight-normalize any layer, fold and export": ["'v': (5, 2, 64)", "same logits: True"],
}

BLOCKS = readme_python_blocks()


def assert_prints(out: str, shown: str) -> None:
  """`out` is `shown` line by line, its numbers within 2e-3."""
  for got, want in itertools.zip_longest(out.splitlines(), shown.splitlines(), fillvalue=""):
    assert _NUMBER.sub("#", got) == _NUMBER.sub("#", want), (got, want)
    np.testing.assert_allclose([float(x) for x in _NUMBER.findall(got)],
                               [float(x) for x in _NUMBER.findall(want)], atol=2e-3,
                               err_msg=f"{got!r} against README's {want!r}")


def test_assert_prints_can_fail():
  shown = "step 0: loss 2.3010\nstep 1: loss 2.2923"
  assert_prints("step 0: loss 2.3012\nstep 1: loss 2.2920\n", shown)
  for wrong in ["step 0: loss 2.3010", "step 0: loss 2.3010\nstep 1: loss 2.2823",
                "step 0: loss 2.3010\nstep 1: cost 2.2923"]:
    with pytest.raises(AssertionError):
      assert_prints(wrong, shown)


def test_every_named_block_exists():
  names = {name for name, _, _ in BLOCKS}
  assert set(SLOW) <= names, sorted(set(SLOW) - names)
  assert set(EXPECTED_OUTPUT) <= names, sorted(set(EXPECTED_OUTPUT) - names)


@pytest.mark.parametrize("name, code, shown", [
    pytest.param(name, code, shown, id=name, marks=[pytest.mark.slow] if name in SLOW else [])
    for name, code, shown in BLOCKS])
def test_readme_python_block_runs(name, code, shown, capsys):
  exec(compile(code, f"README.md ({name})", "exec"), {"__name__": "__main__"})
  out = capsys.readouterr().out
  for expected in EXPECTED_OUTPUT.get(name, []):
    assert expected in out, (expected, out)
  if shown:
    assert_prints(out, shown)


# [text](target) links and `path` mentions of files in the repository.
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
_PATH = re.compile(r"`((?:docs|configs|wn_jax|scripts|tests|benchmarks|analysis)/[\w./-]+)`")


def _pages():
  docs = os.path.join(REPO_ROOT, "docs")
  return ["README.md"] + [os.path.join("docs", name) for name in sorted(os.listdir(docs))
                          if name.endswith(".md")]


def test_every_link_and_path_of_readme_and_docs_resolves_inside_the_repository():
  missing = []
  for page in _pages():
    with open(os.path.join(REPO_ROOT, page)) as f:
      text = f.read()
    base = os.path.dirname(os.path.join(REPO_ROOT, page))
    for target in _LINK.findall(text):
      if target.startswith(("http://", "https://")):
        continue
      path = os.path.normpath(os.path.join(base, target))
      if not path.startswith(REPO_ROOT + os.sep) or not os.path.exists(path):
        missing.append((page, target))
    for target in _PATH.findall(text):
      path = os.path.join(REPO_ROOT, target.rstrip("/."))
      if "<" not in target and "*" not in target and not os.path.exists(path):
        missing.append((page, target))
    if "../shared" in text:
      missing.append((page, "../shared (outside the repository)"))
  assert missing == []
