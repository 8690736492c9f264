"""docs/LAYOUT.md is the architecture: every library module is listed
there, and none imports a module listed after it (data flows down); and
the package's rooms have no import cycle (scripts/layout.py)."""

import ast
import glob
import os
import re

from conftest import REPO_ROOT


def _layout_order():
  with open(os.path.join(REPO_ROOT, "docs", "LAYOUT.md")) as f:
    layout = f.read().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
  paths = re.findall(r"`(wn_jax/[\w/]+\.py)`", layout)
  return [p[:-len(".py")].replace("/", ".") for p in paths]


def _wn_jax_imports(module):
  with open(os.path.join(REPO_ROOT, module.replace(".", "/") + ".py")) as f:
    tree = ast.parse(f.read())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wn_jax"):
      imported.update(f"{node.module}.{alias.name}" for alias in node.names)
      imported.add(node.module)
    elif isinstance(node, ast.Import):
      imported.update(a.name for a in node.names if a.name.startswith("wn_jax"))
  return imported


def test_every_module_is_listed_in_the_layout():
  modules = {os.path.relpath(p, REPO_ROOT)[:-len(".py")].replace("/", ".")
             for p in glob.glob(os.path.join(REPO_ROOT, "wn_jax", "**", "*.py"), recursive=True)
             if not p.endswith("__init__.py")}
  assert modules - set(_layout_order()) == set()


def test_no_module_imports_one_listed_after_it():
  order = _layout_order()
  position = {module: i for i, module in enumerate(order)}
  backwards = {module: sorted(m for m in _wn_jax_imports(module)
                              if position.get(m, -1) >= position[module])
               for module in order}
  assert {m: later for m, later in backwards.items() if later} == {}


def test_the_rooms_have_no_cycle_and_the_study_tools_sit_on_top():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "layout", os.path.join(REPO_ROOT, "scripts", "layout.py"))
  layout = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(layout)
  rooms, arrows = layout.rooms_and_arrows()
  floors = layout.floors(rooms, arrows)  # raises on a cycle
  assert max(floors, key=floors.get) == "study"
  assert not {other for room, other in arrows if room in ("ops", "rnn_ops", "layers", "nnx")} & {
      "models", "tasks", "trainer", "study"}
  assert ("nnx", "layers") not in arrows  # the NNX twins need no Linen module
