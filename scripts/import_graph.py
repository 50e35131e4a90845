"""The import structure of mia_hpc/ and analysis/: layers, arrows between folders, circles.

Reads every first-party import (module level and inside functions) the way
``tests/test_layers.py`` does (its ``graph`` and ``layer`` are the one definition, so the picture
and the test cannot disagree) and prints

* the count of modules and imports, the modules on an import circle, the imports that go up or
  across a layer, and the first-party imports made inside functions;
* a Mermaid flowchart of the folders grouped by layer: the picture in ``docs/architecture.md``.

    python scripts/import_graph.py            # numbers, then the Mermaid block
    python scripts/import_graph.py --summary  # numbers only
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_layers import FILES, MAY_IMPORT, graph, layer  # noqa: E402


def folder(module: str) -> str:
    """``mia_hpc.contract.store`` -> ``mia_hpc.contract``; a loose module stays itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else module


def reaches(g: dict[str, set[str]], a: str, b: str) -> bool:
    seen, todo = set(), [a]
    while todo:
        m = todo.pop()
        if m == b:
            return True
        if m not in seen:
            seen.add(m)
            todo += g.get(m, ())
    return False


def imports_in_functions() -> int:
    n = 0
    for path in FILES.values():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                             else [node.module or "."] if isinstance(node, ast.ImportFrom) and not node.level
                             else ["."] if isinstance(node, ast.ImportFrom) else [])
                    n += sum(x == "." or x.split(".")[0] in ("mia_hpc", "analysis") for x in names)
    return n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--summary", action="store_true", help="print the numbers only, no Mermaid block")
    args = p.parse_args()
    g = graph()
    edges = [(a, b) for a, bs in g.items() for b in bs]
    circles = sorted({tuple(sorted((a, b))) for a, b in edges if reaches(g, b, a)})
    wrong = sorted((a, b) for a, b in edges if layer(b) not in MAY_IMPORT[layer(a)])
    print(f"modules: {len(g)}; first-party imports: {len(edges)}; import pairs on a circle: {len(circles)}; "
          f"imports against the layers: {len(wrong)}; first-party imports inside functions: {imports_in_functions()}")
    for a, b in circles:
        print(f"  circle through {a} <-> {b}")
    for a, b in wrong:
        print(f"  {layer(a)} -> {layer(b)}: {a} imports {b}")
    if args.summary:
        return 0
    arrows = sorted({(folder(a), folder(b)) for a, b in edges if folder(a) != folder(b)})
    nodes = sorted({n for e in arrows for n in e})
    print("\n```mermaid\nflowchart TB")
    for name in ("pipeline", "training", "analysis", "contract"):
        print(f"  subgraph {name}")
        print("\n".join(f'    {n.replace(".", "_")}["{n}"]' for n in nodes if layer(n) == name))
        print("  end")
    print("\n".join(f"  {a.replace('.', '_')} --> {b.replace('.', '_')}" for a, b in arrows))
    print("```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
