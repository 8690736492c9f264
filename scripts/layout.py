"""The package's rooms, floors and import arrows, from the source alone.

    python scripts/layout.py

A room is a top-level module of `wn_jax` or one of its subpackages; an
arrow is one room importing another (counted once per pair); the floor of
a room is 1 + the highest floor among the rooms it imports (a room that
imports none is on floor 1). Prints the counts, any cycle, and each floor's
rooms.
"""

import ast
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "wn_jax")


def room_of(module: str) -> str:
  """'wn_jax.layers.plain' -> 'layers'; 'wn_jax.ops' -> 'ops'."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def rooms_and_arrows(root: str = ROOT) -> tuple[set[str], set[tuple[str, str]]]:
  rooms, arrows = set(), set()
  for folder, _, files in os.walk(root):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, os.path.dirname(root))[:-len(".py")].replace(os.sep, ".")
      module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
      room = room_of(module)
      if not room:
        continue
      rooms.add(room)
      with open(path) as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wn_jax"):
          if node.module == "wn_jax":
            targets = [f"wn_jax.{alias.name}" for alias in node.names]
          else:
            targets = [node.module]
        elif isinstance(node, ast.Import):
          targets = [a.name for a in node.names if a.name.startswith("wn_jax.")]
        for target in targets:
          other = room_of(target)
          if other and other != room:
            arrows.add((room, other))
  return rooms, arrows


def floors(rooms: set[str], arrows: set[tuple[str, str]]) -> dict[str, int]:
  """Each room's floor; raises ValueError on a cycle."""
  level: dict[str, int] = {}

  def visit(room, stack):
    if room in stack:
      raise ValueError("import cycle: " + " -> ".join(stack + (room,)))
    if room not in level:
      below = [visit(other, stack + (room,)) for a, other in arrows if a == room]
      level[room] = 1 + max(below, default=0)
    return level[room]

  for room in sorted(rooms):
    visit(room, ())
  return level


def main() -> None:
  rooms, arrows = rooms_and_arrows()
  level = floors(rooms, arrows)
  print(f"{len(rooms)} rooms on {max(level.values())} floors, {len(arrows)} arrows")
  for floor in range(1, max(level.values()) + 1):
    print(f"  floor {floor}: {', '.join(sorted(r for r in rooms if level[r] == floor))}")


if __name__ == "__main__":
  sys.exit(main())
