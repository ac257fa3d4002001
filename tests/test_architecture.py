"""The package tree is the architecture: layers import only downwards, TensorFlow only in runtime/.

Every import is checked, at module level or inside a function, so a cycle can't be hidden in a
function-local import. The layers, lowest first (the README's architecture section draws them):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pyserving"

LAYERS = [
    {"errors", "options"},  # leaves any layer may use
    {"__init__"},  # the version, and InvalidInput for model code
    {"codecs", "storage"},
    {"config", "runtime"},
    {"core", "observability"},
    {"serving"},
    {"protocols"},
    {"server"},
    {"client"},
    {"mnist"},
    {"cli"},
    {"ray_serve", "__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# Subpackages whose own modules also stay in layers, so their rooms don't lean on each other.
SUBLAYERS = {"protocols": [{"control_plane"}, {"open_inference"}, {"triton_extensions"}, {"grpc", "rest"}]}
TENSORFLOW_ALLOWED = {"runtime", "mnist"}
MAX_LOOSE_MODULES = 6
MAX_LINES = 400


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found.append((".".join(parts), path))
    return found


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(absolute pyserving-relative module, line) for every import of pyserving in the module."""
    package = name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "pyserving":
                target = ".".join(node.module.split(".")[1:])
            else:
                continue
            if node.module is None or _is_package(target):
                # from PACKAGE import name: a module of the package, or a name its __init__ defines
                found += [(f"{target}.{a.name}".strip(".") if _is_module(f"{target}.{a.name}".strip("."))
                           else target or "__init__", node.lineno) for a in node.names]
            else:
                found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(".".join(a.name.split(".")[1:]), node.lineno) for a in node.names
                      if a.name.split(".")[0] == "pyserving"]
    return found


def _is_package(module: str) -> bool:
    return (SRC.joinpath(*module.split(".")) / "__init__.py").exists() if module else True


def _is_module(module: str) -> bool:
    return _is_package(module) or SRC.joinpath(*module.split(".")).with_suffix(".py").exists()


def _unit(module: str) -> str:
    return module.split(".")[0] or "__init__"


def _tensorflow_imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for name in names:
            if name == "tensorflow" or name.startswith("tensorflow."):
                found.append((name, node.lineno))
    return found


@pytest.mark.parametrize("name,path", _modules(), ids=[n for n, _ in _modules()])
def test_imports_go_down_the_layers(name: str, path: Path):
    unit = _unit(name)
    assert unit in RANK, f"{name}: a new room? Put {unit} in a layer of this test and the README"
    for target, line in _imports(name, path):
        target_unit = _unit(target)
        if target_unit == unit:
            sub = SUBLAYERS.get(unit)
            if sub and len(name.split(".")) > 1 and len(target.split(".")) > 1:
                ranks = {u: r for r, us in enumerate(sub) for u in us}
                mine, theirs = name.split(".")[1], target.split(".")[1]
                assert mine == theirs or ranks[theirs] < ranks[mine], \
                    f"{path.name}:{line}: {name} imports {target} across {unit}/"
            continue
        assert RANK[target_unit] < RANK[unit], \
            f"{path.relative_to(SRC)}:{line}: {unit} imports {target}, a layer above or beside it"


@pytest.mark.parametrize("name,path", _modules(), ids=[n for n, _ in _modules()])
def test_tensorflow_only_in_runtime_and_the_tutorial(name: str, path: Path):
    if _unit(name) in TENSORFLOW_ALLOWED:
        return
    for module, line in _tensorflow_imports(path):
        # TensorFlow's protos (TensorProto, Example, DataType) are data formats, not the runtime.
        assert module.startswith("tensorflow.core.") and module.split(".")[-1] != "core", \
            f"{path.relative_to(SRC)}:{line}: imports {module}: only runtime/ runs TensorFlow"


def test_the_top_holds_few_loose_modules_and_no_module_is_long():
    loose = sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__")
    assert len(loose) <= MAX_LOOSE_MODULES, loose
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_every_room_says_what_lives_there():
    for package in sorted(p.parent for p in SRC.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"{package.relative_to(SRC.parent)}/__init__.py needs a docstring"
