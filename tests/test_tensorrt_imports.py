"""The import order inside ``dmm_deploy/export/`` is one-way, and the TensorRT builder is
torch-free at import time (the torch-free runtime builds engines with it)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dmm_deploy.export

EXPORT = Path(dmm_deploy.export.__file__).parent
PACKAGE = "dmm_deploy.export"


def _edges() -> dict[str, set[str]]:
    """module -> the export modules it imports, at module level or inside functions."""
    modules = {p.stem for p in EXPORT.glob("*.py") if p.stem != "__init__"}
    edges = {}
    for name in modules:
        tree = ast.parse((EXPORT / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith(f"{PACKAGE}."):
                    found.add(node.module.split(".")[2])
                elif node.module == PACKAGE:
                    found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(f"{PACKAGE}."):
                        found.add(alias.name.split(".")[2])
        edges[name] = (found & modules) - {name}
    return edges


def _cycle(edges):
    state = {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                return [*path[path.index(m) :], m] if m in path else [n, m]
            if m not in state and (c := visit(m, [*path, m])):
                return c
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n, [n])):
            return c
    return None


def test_export_modules_import_one_way():
    edges = _edges()
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"
    # the layers of the TensorRT side, bottom first
    assert edges["tensorrt_compat"] == set()
    assert edges["trt_plugin"] <= {"tensorrt_compat", "_plugin_kernel"}
    assert "matcher_job" not in edges["trt_plugin"] | edges["tensorrt"] | edges["engine_job"]


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        # the builder, for a torch-free runtime environment (no onnx there either)
        ("tensorrt", ("torch", "onnx", "tensorrt", "triton")),
        ("tensorrt_compat", ("torch", "onnx", "tensorrt", "triton")),
        ("trt_plugin", ("torch", "tensorrt", "triton")),
        ("engine_job", ("torch", "tensorrt", "triton")),
        ("__init__", ("torch", "onnx", "tensorrt", "triton")),
    ],
)
def test_tensorrt_side_imports_without_torch(module, absent):
    name = PACKAGE if module == "__init__" else f"{PACKAGE}.{module}"
    code = f"import sys, {name}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_export_module_imports_alone():
    """Each module imports in a fresh interpreter (no order-dependent cycle)."""
    names = sorted(p.stem for p in EXPORT.glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    for k in [k for k in sys.modules if k.startswith('dmm_deploy')]:\n"
        "        del sys.modules[k]\n"
        f"    importlib.import_module('{PACKAGE}.' + n)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_package_names_load_lazily():
    from dmm_deploy.export import ExportOptions, check_tensorrt

    assert ExportOptions.__module__ == f"{PACKAGE}.onnx_export"
    assert check_tensorrt.__module__ == f"{PACKAGE}.tensorrt_compat"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dmm_deploy.export.nope  # noqa: B018
