"""A stand-in for TensorRT's compiled core, to load NVIDIA's pure-Python ``tensorrt.plugin``.

The ``tensorrt-cu12-bindings`` wheel carries ``tensorrt_bindings/plugin/`` (quickly deployable
plugins: ``register``, ``autotune``, ``aot_impl`` and their validation) next to a compiled
``tensorrt.so`` that needs libnvinfer. :func:`load_plugin_package` puts this module's
:func:`make_core` in ``sys.modules["tensorrt"]`` and imports NVIDIA's ``plugin`` package as
``tensorrt.plugin`` over it, unchanged. The core holds only what that package touches: enums,
plugin fields and registry, interface base classes, and symbolic dimension expressions that
can be evaluated for concrete shapes (what TensorRT does at run time).

:func:`drive_aot_plugin` then calls the plugin the way TensorRT's builder does through the
IPluginV3 quick-plugin interfaces: create (strict AOT), output types, output shapes, type and
format combinations, configure, tactics, launch parameters, kernel.
"""

import enum
import importlib
import importlib.util
import math
import sys
import types

import numpy as np


class _Enum(enum.Enum):
    pass


def make_core(version: str = "11.4.0.106") -> types.ModuleType:
    """A fresh ``tensorrt`` stand-in module of that version."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, level=2):
            self.level = level
            self.messages = []

        def log(self, severity, msg):
            self.messages.append((severity, msg))

    trt.Logger = Logger
    trt.DataType = _Enum(
        "DataType",
        [
            "FLOAT",
            "HALF",
            "INT8",
            "INT32",
            "BOOL",
            "UINT8",
            "FP8",
            "BF16",
            "INT64",
            "INT4",
            "FP4",
            "E8M0",
        ],
    )
    trt.float32, trt.float16, trt.int32 = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32
    trt.TensorFormat = _Enum(
        "TensorFormat", ["LINEAR", "CHW2", "HWC8", "CHW4", "CHW16", "CHW32", "HWC"]
    )
    trt.PluginFieldType = _Enum(
        "PluginFieldType",
        [
            "FLOAT16",
            "FLOAT32",
            "FLOAT64",
            "INT8",
            "INT16",
            "INT32",
            "CHAR",
            "DIMS",
            "UNKNOWN",
            "BF16",
            "INT64",
            "FP8",
            "INT4",
        ],
    )
    trt.PluginArgType = _Enum("PluginArgType", "INT")
    trt.PluginArgDataType = _Enum("PluginArgDataType", "INT8 INT16 INT32")
    trt.TensorRTPhase = _Enum("TensorRTPhase", "BUILD RUNTIME")
    trt.QuickPluginCreationRequest = _Enum(
        "QuickPluginCreationRequest", "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT"
    )
    trt.DimensionOperation = _Enum(
        "DimensionOperation", "SUM PROD MAX MIN SUB EQUAL LESS FLOOR_DIV CEIL_DIV"
    )
    _ops = {
        "SUM": lambda a, b: a + b,
        "PROD": lambda a, b: a * b,
        "MAX": max,
        "MIN": min,
        "SUB": lambda a, b: a - b,
        "EQUAL": lambda a, b: int(a == b),
        "LESS": lambda a, b: int(a < b),
        "FLOOR_DIV": lambda a, b: a // b,
        "CEIL_DIV": lambda a, b: -(-a // b),
    }

    class IDimensionExpr:
        """A dimension: a constant, a named input dimension, or an operation on two."""

        def __init__(self, evaluate, constant=None, text=""):
            self._evaluate, self._constant, self.text = evaluate, constant, text

        def is_constant(self):
            return self._constant is not None

        def get_constant_value(self):
            return self._constant

        def is_size_tensor(self):
            return False

        def evaluate(self, env: dict) -> int:
            """The value for concrete dimensions ``env`` (name -> int)."""
            return self._evaluate(env)

    class IExprBuilder:
        def constant(self, value):
            return IDimensionExpr(lambda env: value, value, str(value))

        def operation(self, op, a, b):
            fn = _ops[op.name]
            if a.is_constant() and b.is_constant():
                return self.constant(fn(a.get_constant_value(), b.get_constant_value()))
            return IDimensionExpr(
                lambda env: fn(a.evaluate(env), b.evaluate(env)),
                None,
                f"{op.name}({a.text}, {b.text})",
            )

    def symbol(name):
        return IDimensionExpr(lambda env: env[name], None, name)

    trt.IDimensionExpr, trt.IExprBuilder, trt.symbol = IDimensionExpr, IExprBuilder, symbol

    class Dims(tuple):
        MAX_DIMS = 8

        def __new__(cls, value=()):
            return super().__new__(cls, (-1,) * value if isinstance(value, int) else value)

    class DimsExprs(list):
        def __init__(self, n):
            super().__init__([None] * n)

    trt.Dims, trt.DimsExprs = Dims, DimsExprs

    class PluginTensorDesc:
        def __init__(self, dims=(), type=None, format=None, scale=1.0):
            self.dims, self.type, self.format, self.scale = Dims(dims), type, format, scale

    class DynamicPluginTensorDesc:
        def __init__(self, desc, min=(), opt=(), max=()):
            self.desc, self.min, self.opt, self.max = desc, Dims(min), Dims(opt), Dims(max)

    trt.PluginTensorDesc, trt.DynamicPluginTensorDesc = PluginTensorDesc, DynamicPluginTensorDesc

    class PluginField:
        def __init__(self, name, data=None, type=None):
            self.name, self.data, self.type = name, data, type

    class PluginFieldCollection(list):
        pass

    trt.PluginField, trt.PluginFieldCollection = PluginField, PluginFieldCollection

    class _Interface:
        def __init__(self, *args, **kwargs):
            pass

    for name in (
        "IPluginV3",
        "IPluginV3QuickCore",
        "IPluginV3QuickBuild",
        "IPluginV3QuickRuntime",
        "IPluginV3QuickAOTBuild",
        "IPluginCreatorV3Quick",
        "ISymExpr",
        "ITensor",
    ):
        setattr(trt, name, type(name, (_Interface,), {}))

    class Registry:
        def __init__(self):
            self.creators = {}

        def register_creator(self, creator, namespace):
            key = (creator.name, creator.plugin_version, namespace)
            if key in self.creators:
                return False
            self.creators[key] = creator
            return True

        def get_creator(self, name, version, namespace=""):
            return self.creators.get((name, version, namespace))

    registry = Registry()
    trt.get_plugin_registry = lambda: registry
    trt.nptype = lambda t: {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32}[t.name]
    return trt


def load_plugin_package(monkeypatch, version: str = "11.4.0.106"):
    """Install a fresh core as ``tensorrt`` and import NVIDIA's ``tensorrt.plugin`` over it
    (from the installed ``tensorrt_bindings`` package, whose compiled part is not loaded).
    Returns ``(core, plugin package)``; ``monkeypatch`` restores ``sys.modules`` after."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    core = make_core(version)
    core.__path__ = list(spec.submodule_search_locations)
    for name in [n for n in sys.modules if n == "tensorrt" or n.startswith("tensorrt.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorrt", core)
    plugin = importlib.import_module("tensorrt.plugin")
    for name in [n for n in sys.modules if n.startswith("tensorrt.")]:
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # removed again after
    return core, plugin


def _field(trt, name, value, kind):
    if kind is str:
        return trt.PluginField(
            name, np.frombuffer(value.encode(), np.int8), trt.PluginFieldType.CHAR
        )
    dtype = {int: np.int64, float: np.float64, bool: np.int8}[kind]
    ftype = {int: "INT64", float: "FLOAT64", bool: "INT8"}[kind]
    return trt.PluginField(name, np.array([value], dtype), trt.PluginFieldType[ftype])


class _ArgSetter:
    def __init__(self):
        self.nbSymExprs = 0
        self.args = {}

    def __setitem__(self, i, value):
        self.args[i] = value


def drive_aot_plugin(trt, plugin_id: str, attrs: dict, dtype, n_inputs: int = 2):
    """Call a registered plugin the way TensorRT's builder does, for rank-3 inputs of
    ``dtype`` with symbolic dims ``B, n, m``. Returns a dict with the output types and shape
    expressions, the type combinations, the launch parameters and extra-argument expressions
    (both evaluable with ``.evaluate({"B": .., "n": .., "m": ..})``), the argument types
    TensorRT passes to the kernel, and the kernel's name and PTX."""
    namespace, name = plugin_id.split("::")
    creator = trt.get_plugin_registry().get_creator(name, "1", namespace)
    assert creator is not None, f"{plugin_id} is not in the plugin registry"
    kinds = {f.name: f for f in creator.field_names}
    fields = []
    for key, value in attrs.items():
        assert key in kinds, f"attribute {key} is not a field of the creator"
        fields.append(_field(trt, key, value, type(value)))
    plg = creator.create_plugin(
        name,
        namespace,
        trt.PluginFieldCollection(fields),
        trt.TensorRTPhase.BUILD,
        trt.QuickPluginCreationRequest.STRICT_AOT,
    )
    assert isinstance(plg, trt.IPluginV3QuickAOTBuild)
    n_out = plg.get_num_outputs()
    out_types = plg.get_output_data_types([dtype] * n_inputs, [3] * n_inputs)
    builder = trt.IExprBuilder()
    dims = [trt.symbol(s) for s in ("B", "n", "m")]
    in_exprs = [list(dims) for _ in range(n_inputs)]
    out_exprs = plg.get_output_shapes(in_exprs, [], builder)

    def dyn(t):
        d = trt.PluginTensorDesc((-1, -1, -1), t, trt.TensorFormat.LINEAR)
        return trt.DynamicPluginTensorDesc(d, (1, 1, 1), (8, 8, 128), (64, 16, 512))

    in_out = [dyn(dtype) for _ in range(n_inputs)] + [dyn(t) for t in out_types]
    combos = plg.get_supported_format_combinations(in_out, n_inputs)
    width = n_inputs + n_out
    combinations = [
        tuple((d.type, d.format) for d in combos[i : i + width])
        for i in range(0, len(combos), width)
    ]
    plg.configure_plugin(in_out[:n_inputs], in_out[n_inputs:])
    tactics = plg.get_valid_tactics()
    plg.set_tactic(tactics[0] if tactics else 0)
    launch = types.SimpleNamespace()
    setter = _ArgSetter()
    plg.get_launch_params(in_exprs, in_out, n_inputs, launch, setter, builder)
    kernel_name, ptx = plg.get_kernel(
        [d.desc for d in in_out[:n_inputs]], [d.desc for d in in_out[n_inputs:]]
    )
    extra = [setter.args[i] for i in range(setter.nbSymExprs)]
    width_of = {"INT32": "u32", "INT16": "u16", "INT8": "u8"}
    passed = ["u64"] * n_inputs + [width_of[a.dtype.name] for a in extra] + ["u64"] * n_out
    return {
        "out_types": out_types,
        "out_exprs": out_exprs,
        "combinations": combinations,
        "tactics": tactics,
        "launch": launch,
        "extra": [a.expr for a in extra],
        "passed_types": passed,
        "kernel_name": kernel_name.decode() if isinstance(kernel_name, bytes) else kernel_name,
        "ptx": ptx.decode() if isinstance(ptx, bytes) else ptx,
    }


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
