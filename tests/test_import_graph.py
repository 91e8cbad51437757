"""The library's import graph, derived from the source: layered, acyclic, no private cross-imports.

Layers, lowest first; a module may import only from its own layer or lower ones:
  0 sharding, masking, patches  1 models        2 losses        3 data        4 train, checkpoint
  5 evals                    6 zoo           7 api, notebooks' helpers     8 cli, entry points
Every `import` counts, including those inside functions (a lazy import is still a dependency).
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mmfm")

LAYERS = [
    ("mmfm.sharding", "mmfm.masking", "mmfm.patches", "mmfm.version", "mmfm.compile_cache",
     "mmfm.fileio"),
    ("mmfm.models",),
    ("mmfm.losses",),
    ("mmfm.data",),
    ("mmfm.train", "mmfm.checkpoint", "mmfm.config_utils"),
    ("mmfm.evals",),
    ("mmfm.zoo",),
    ("mmfm.api", "mmfm.notebook_utils", "mmfm.notebook_inference", "mmfm", "mmfm.embed",
     "mmfm.search"),
    ("mmfm.cli", "mmfm.train.__main__"),
]


def _modules() -> dict[str, str]:
    mods = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                mods[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return mods


MODULES = _modules()


def _layer(module: str) -> int:
    """The layer of the longest matching prefix in LAYERS."""
    best, layer = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, layer = len(name), i
    assert layer is not None, f"{module} is in no layer: add it to LAYERS"
    return layer


def _resolve(name: str):
    while name and name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def _imports(module: str):
    """(target module, imported names, line) of every mmfm import in `module`."""
    path = MODULES[module]
    pkg = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _resolve(a.name)
                if target:
                    yield target, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = _resolve(f"{base}.{a.name}")  # `from mmfm.evals import runner`
                if sub and sub != _resolve(base):
                    yield sub, [], node.lineno
                elif _resolve(base):
                    yield _resolve(base), [a.name], node.lineno


def _edges():
    for m in MODULES:
        for target, names, line in _imports(m):
            if target != m:
                yield m, target, names, line


def test_every_module_has_a_layer():
    for m in MODULES:
        _layer(m)


def test_no_import_from_a_higher_layer():
    bad = [f"{m}:{line} imports {t} (layer {_layer(t)} above {_layer(m)})"
           for m, t, _, line in _edges()
           if _layer(t) > _layer(m) and not (m == "mmfm" and t.startswith("mmfm."))]
    assert not bad, "\n".join(bad)


def test_no_private_name_imported_from_another_module():
    bad = [f"{m}:{line} imports {t}.{n}" for m, t, names, line in _edges() for n in names
           if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_the_module_graph_is_acyclic():
    graph = {m: set() for m in MODULES}
    for m, t, _, _ in _edges():
        # A package's __init__ re-exporting its submodules is not a cycle with them.
        if not (MODULES[t].endswith("__init__.py") and m.startswith(t + ".")):
            graph[m].add(t)
    state, stack, cycles = {}, [], []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["mmfm.checkpoint"])
def test_only_the_checkpoint_module_imports_orbax(module):
    users = sorted(m for m, p in MODULES.items() if "orbax" in open(p).read() and
                   any(isinstance(n, (ast.Import, ast.ImportFrom)) and "orbax" in ast.dump(n)
                       for n in ast.walk(ast.parse(open(p).read()))))
    assert users == [module]
