"""The library's import graph, derived from the source: layered, acyclic, no private cross-imports.

Layers, lowest first; a module may import only from its own layer or lower ones:
  0 sharding, masking, patches  1 models        2 losses        3 data        4 train, checkpoint
  5 evals                    6 zoo, local    7 api, notebooks' helpers     8 cli, entry points
mmfm.local sits with the zoo for its tokenizers (mmfm.zoo.tokenizers), and a test below keeps
everything it reaches free of the training stack.
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
    ("mmfm.zoo", "mmfm.local"),
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


# What `import mmfm.local` may reach: jax, numpy and tokenizer libraries, never the training stack.
LOCAL_FORBIDDEN_MMFM = ("mmfm.models", "mmfm.api", "mmfm.train", "mmfm.checkpoint", "mmfm.evals",
                        "mmfm.losses", "mmfm.sharding", "mmfm.zoo.registry")
LOCAL_FORBIDDEN_PACKAGES = ("flax", "optax", "orbax", "grain", "tensorflow_datasets", "tensorflow",
                            "chex", "ml_collections", "torch")


def _import_time_nodes(node):
    """The statements that run when a module is imported (function bodies do not)."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from _import_time_nodes(child)


def _external_imports(module: str) -> set:
    """Top-level package names a module imports when it is imported (a function's lazy import,
    such as mmfm.data.tokenizers reading TFDS text only when asked to, is checked at run time by
    tests/zoo/test_serialized.py)."""
    names = set()
    for node in _import_time_nodes(ast.parse(open(MODULES[module]).read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_mmfm_local_reaches_no_training_code():
    seen, todo = set(), ["mmfm.local"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        # `mmfm` itself imports its public API lazily (PEP 562): only its eager imports count.
        todo += [t for t, _, _ in _imports(m) if not (m == "mmfm" and t not in ("mmfm.version",
                                                                                "mmfm.host_memory"))]
        if "." in m:
            todo.append(m.rsplit(".", 1)[0])  # importing a submodule runs its package's __init__
    bad = sorted(m for m in seen if m.startswith(LOCAL_FORBIDDEN_MMFM))
    assert not bad, f"mmfm.local reaches {bad}"
    external = set().union(*(_external_imports(m) for m in seen))
    assert "jax" in external and not external & set(LOCAL_FORBIDDEN_PACKAGES), sorted(external)
