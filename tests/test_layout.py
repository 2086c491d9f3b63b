"""The shape the architecture promises (docs/architecture.md), checked on the source:
no import cycles, seams that nothing else branches around, a small pipeline."""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ctc_trainer")


def modules():
  """-> {dotted name: path} of every module of the package."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


def imports(path, known):
  """The package modules `path` imports, at any depth (late imports count too; a
  typing-only import does not)."""
  tree = ast.parse(open(path, encoding="utf-8").read())
  typing_only = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
      typing_only.update(id(n) for n in ast.walk(node))
  out = set()
  for node in ast.walk(tree):
    if id(node) in typing_only:
      continue
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ctc_trainer"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        out.add(full if full in known else node.module)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("ctc_trainer"))
  return out & set(known)


def test_no_import_cycles():
  known = modules()
  graph = {name: imports(path, known) for name, path in known.items()}
  state, cycle = {}, []

  def visit(name, stack):
    state[name] = "open"
    for dep in sorted(graph[name]):
      if state.get(dep) == "open":
        cycle.extend(stack[stack.index(dep):] + [name, dep])
        return True
      if dep not in state and visit(dep, stack + [name]):
        return True
    state[name] = "done"
    return False

  for name in sorted(graph):
    if name not in state and visit(name, []):
      break
  assert not cycle, " -> ".join(cycle)


def test_pipeline_is_composition_under_250_lines():
  with open(os.path.join(PACKAGE, "data", "pipeline.py"), encoding="utf-8") as f:
    assert len(f.readlines()) < 250


@pytest.mark.parametrize("pattern, allowed", [
    (r"modality\s*==|==\s*[\"'](image|audio)[\"']", ("data/image.py", "data/audio.py",
                                                      "data/modalities.py")),
    (r"\.shards\b", ("data/sources/tfrecord.py",)),
    (r"data_format\s*==", ("config.py",)),
])
def test_no_branch_on_a_seam_outside_it(pattern, allowed):
  offenders = []
  for name, path in modules().items():
    rel = os.path.relpath(path, PACKAGE)
    if rel in allowed:
      continue
    for lineno, line in enumerate(open(path, encoding="utf-8"), 1):
      if re.search(pattern, line.split("#")[0]):
        offenders.append(f"{rel}:{lineno}: {line.strip()}")
  assert not offenders, "\n".join(offenders)


def test_every_registered_modality_loads_and_names_itself():
  from ctc_trainer import config  # pylint: disable=import-outside-toplevel
  from ctc_trainer.data import modalities  # pylint: disable=import-outside-toplevel
  for name in modalities.names():
    assert modalities.modality_class(name).name == name
  assert sorted(config.MODALITIES) == modalities.names()
