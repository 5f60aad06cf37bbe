"""Dependencies run one way: the library never imports the spec.

The library is refattn's core (reference, native, masks, layers, pictures, machine); the spec
(refattn.spec) checks it and may use it as a subject. The tools on top, the `refattn` command
(refattn.cli) and `refattn bench` (refattn.bench), may import both.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import refattn

PACKAGE = Path(refattn.__file__).parent
TOOLS = ("cli.py", "bench")
LIBRARY = sorted(
    path
    for path in PACKAGE.rglob("*.py")
    if path.relative_to(PACKAGE).parts[0] not in (*TOOLS, "spec")
)


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_library_has_modules_to_check():
    assert {"reference.py", "native.py", "mha.py", "pictures.py"} <= {p.name for p in LIBRARY}


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_library_module_imports_the_spec(path):
    spec = sorted(
        n for n in _imported(path) if n == "refattn.spec" or n.startswith("refattn.spec.")
    )
    assert not spec, f"{path.name} imports {spec}: the library never imports the spec"


@pytest.mark.parametrize(
    "module", ["refattn", "refattn.pictures", "refattn.bench", "refattn.spec.tolerance"]
)
def test_importing_does_not_load_hypothesis_or_the_invariants(module, tmp_path):
    code = (
        f"import sys, {module}\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'hypothesis' "
        "or m.startswith('refattn.spec.invariants')]\n"
        "print(loaded)\n"
    )
    # Run from elsewhere: from the checkout, `-c` would import the source tree, not the package.
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", f"import {module} loads {done.stdout.strip()}"
