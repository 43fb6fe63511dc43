"""Imports flow one way (README, 'Layers'): no module imports a higher layer."""

import ast
from pathlib import Path

import nfrecon

# Lowest first. A top-level name of the package (module or subpackage) -> its rank.
LAYERS = [
    ("errors", "fsutil", "configio", "devices", "resources"),
    ("geometry",),
    ("data", "metrics"),
    ("outputs",),
    ("ops",),
    ("recon", "simulate"),
    ("fields",),
    ("render",),
    ("fit",),
    ("learned",),
    ("bench",),
    ("cli", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
PACKAGE = Path(nfrecon.__file__).parent


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "nfrecon" and len(parts) > 1 else None


def test_every_module_has_a_layer_and_imports_flow_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        own = rel.parts[0].removesuffix(".py")
        assert own in RANK, f"{rel}: no layer assigned (add it to LAYERS and the README)"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                top = _top(name)
                if top is not None and top in RANK and RANK[top] > RANK[own]:
                    wrong.append(f"{rel} imports {name}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(set(wrong)))
