"""The house's shape: one-way layers and no import circle, read from the code (``ast``).

Each file's layer is decided by its path:

* contract -- ``mia_hpc/contract/`` (and the bare ``mia_hpc/__init__.py``): spec, store schema,
  seeding, keep masks, queries, settings. Imports nothing first-party outside itself; never torch.
* training -- ``mia_hpc/data/``, ``mia_hpc/models.py``, ``mia_hpc/train/``: imports contract and training.
* analysis -- ``analysis/``: imports contract (from ``mia_hpc``) and analysis; never torch.
* pipeline -- every other file of ``mia_hpc/``: may import everything.

Imports inside functions count as much as module-level ones: a function-level import hides a
circle from Python, not from the reader. This test is the habit that keeps the shape, not a cage:
when it fails, move the code to the layer it belongs to rather than teaching the test an exception.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mia_hpc", "analysis")
MAY_IMPORT = {
    "contract": {"contract"},
    "training": {"contract", "training"},
    "analysis": {"contract", "analysis"},
    "pipeline": {"contract", "training", "analysis", "pipeline"},
}
NO_TORCH = {"contract", "analysis"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def layer(module: str) -> str:
    """The layer of a first-party module, by its path."""
    if module.startswith("analysis"):
        return "analysis"
    if module in ("mia_hpc", "mia_hpc.contract") or module.startswith("mia_hpc.contract."):
        return "contract"
    if module.startswith(("mia_hpc.data", "mia_hpc.train")) or module == "mia_hpc.models":
        return "training"
    return "pipeline"


def _resolve(name: str) -> str:
    """The first-party module (or package) that ``import name`` runs last."""
    while name and name not in FILES:
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported name, line, is first-party) of every import in ``module``, at any depth."""
    path = FILES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out += [(n, node.lineno, n.split(".")[0] in PACKAGES) for n in names]
    return out


def graph() -> dict[str, set[str]]:
    return {m: {_resolve(n) for n, _, ours in imports(m) if ours} - {m} for m in FILES}


def test_layers_import_downwards_only():
    bad = [f"{FILES[m].relative_to(ROOT)}:{line}: {layer(m)} imports {name} ({layer(_resolve(name))})"
           for m in FILES for name, line, ours in imports(m)
           if ours and layer(_resolve(name)) not in MAY_IMPORT[layer(m)]]
    assert not bad, "upward imports (see tests/test_layers.py for the layers):\n" + "\n".join(bad)


def test_no_torch_in_contract_or_analysis():
    bad = [f"{FILES[m].relative_to(ROOT)}:{line}: imports {name}"
           for m in FILES if layer(m) in NO_TORCH
           for name, line, _ in imports(m) if name.split(".")[0] in ("torch", "torchvision", "opacus")]
    assert not bad, "torch on a torch-free layer:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["mia_hpc", "analysis"])
def test_no_import_circle(package):
    g = {m: {t for t in ts if t.startswith(package)} for m, ts in graph().items() if m.startswith(package)}
    try:
        graphlib.TopologicalSorter(g).prepare()
    except graphlib.CycleError as e:
        pytest.fail("import circle (module-level and function-level imports together): " + " -> ".join(e.args[1]))


#: ``analysis/`` folders from the bottom up: each imports only its own and lower ones.
ANALYSIS_ORDER = ("kernels", "store_io", "attacks", "studies", "output", "tools")


def test_analysis_folders_import_downwards_only():
    def rank(module: str) -> int:
        parts = module.split(".")
        return ANALYSIS_ORDER.index(parts[1]) if len(parts) > 1 else len(ANALYSIS_ORDER)  # the package root: top

    bad = [f"{FILES[m].relative_to(ROOT)}:{line}: imports {name}"
           for m in FILES if m.startswith("analysis.")
           for name, line, ours in imports(m)
           if ours and _resolve(name).startswith("analysis.") and rank(_resolve(name)) > rank(m)]
    assert not bad, f"analysis/ imports against {' < '.join(ANALYSIS_ORDER)}:\n" + "\n".join(bad)



def test_every_first_party_import_names_a_module_that_exists():
    # a function-level import of a moved module fails only when its function runs; this finds it now
    bad = []
    for m, path in FILES.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base.split(".")[0] in PACKAGES and base not in FILES:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {base} import ...")
            elif isinstance(node, ast.Import):
                bad += [f"{path.relative_to(ROOT)}:{node.lineno}: import {a.name}" for a in node.names
                        if a.name.split(".")[0] in PACKAGES and a.name not in FILES]
    assert not bad, "imports of modules that do not exist:\n" + "\n".join(bad)
