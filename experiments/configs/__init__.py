"""The experiment recipes, installed with the package as `mmfm.recipes`.

In the repository they live in `experiments/configs/` (`mmfm/recipes` links there), so the wheel
carries the same files. A recipe imports its helpers as `from mmfm.recipes import common`, so a
copy of it trains from any directory:

    mmfm recipes                        # names and one-line descriptions
    mmfm recipes copy demo my_demo.py   # then edit it and: mmfm train --config my_demo.py ...
"""
from __future__ import annotations

import ast
import os

_DIR = os.path.dirname(os.path.abspath(__file__))
HELPERS = ("common",)  # shared by the recipes; not recipes themselves


def recipe_path(name: str) -> str:
    """The file of recipe `name` ('demo' or 'demo.py'); ValueError naming the valid ones."""
    stem = name[:-3] if name.endswith(".py") else name
    recipes = available()
    if stem not in recipes:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(sorted(recipes))}")
    return os.path.join(_DIR, f"{stem}.py")


def available() -> dict[str, str]:
    """{name: first line of its docstring} of every recipe (a module with `get_config`)."""
    out = {}
    for fname in sorted(os.listdir(_DIR)):
        stem = fname[:-3]
        if not fname.endswith(".py") or stem.startswith("_") or stem in HELPERS:
            continue
        with open(os.path.join(_DIR, fname)) as f:
            tree = ast.parse(f.read(), fname)
        if not any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in tree.body):
            continue
        doc = (ast.get_docstring(tree) or "").strip().splitlines()
        out[stem] = doc[0] if doc else ""
    return out
