"""The package's layers point one way (README, Layout): lower layers never import upper ones."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "s2dc_jax"

# folder -> the s2dc_jax folders it must not import (at any depth, including imports inside functions)
FORBIDDEN = {
    "data": {"objectives", "models", "tasks", "training", "interop", "bench"},
    "models": {"objectives", "data", "tasks", "training", "interop", "bench"},
    "objectives": {"data", "tasks", "training", "interop", "bench"},
    "interop": {"objectives", "data", "tasks", "training", "bench"},
    "tasks": {"training", "bench"},
}


def imported_packages(path: Path) -> set[str]:
    """The s2dc_jax subpackages that ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from s2dc_jax import training" names the subpackage after "import"
            names = [f"s2dc_jax.{a.name}" for a in node.names] if node.module == "s2dc_jax" else [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "s2dc_jax" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(folder):
    bad = {f"{p.name} imports s2dc_jax.{pkg}" for p in (PACKAGE / folder).glob("*.py")
           for pkg in imported_packages(p) & FORBIDDEN[folder]}
    assert not bad, sorted(bad)


def test_the_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from s2dc_jax.objectives import s2dc\n    import s2dc_jax.training.loop\n"
                 "    from s2dc_jax import data, bench\n")
    assert imported_packages(f) == {"objectives", "training", "data", "bench"}
