"""Engine building and running: pure-Python parts without TensorRT, the rest with it.

The build flow is exercised against a small stand-in for the ``tensorrt`` module that
records what the builder was asked to do; the real build/run tests are marked ``trt`` and
``gpu`` and skip without TensorRT or a CUDA device.
"""

import dataclasses
import importlib.util
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from dmm_deploy.export import tensorrt as trt_mod
from dmm_deploy.export.tensorrt import (
    INSTALL_HINT,
    BuilderOptions,
    ShapeProfile,
    TensorRTBuildError,
    build_engine,
    engine_cache_path,
    format_parser_errors,
    import_tensorrt,
    network_setup,
    parse_shape,
)

# -- pure Python ----------------------------------------------------------------------------


def test_parse_shape():
    assert parse_shape("8x16x128") == (8, 16, 128)
    assert parse_shape("1X1X1") == (1, 1, 1)
    for bad in ("8x16", "0x1x1", "axbxc", "1x2x3x4", ""):
        with pytest.raises(ValueError, match="BxNxM"):
            parse_shape(bad, "--opt")


def test_shape_profile_validation():
    p = ShapeProfile.parse("1x1x1", "4x8x64", "16x16x256")
    assert (p.min, p.opt, p.max) == ((1, 1, 1), (4, 8, 64), (16, 16, 256))
    with pytest.raises(ValueError, match="min <= opt <= max for m"):
        ShapeProfile((1, 1, 1), (4, 8, 512), (16, 16, 256))
    with pytest.raises(ValueError, match="min <= opt <= max for B"):
        ShapeProfile((8, 1, 1), (4, 8, 64), (16, 16, 256))
    with pytest.raises(ValueError, match="profile opt"):
        ShapeProfile((1, 1, 1), (4, 8), (16, 16, 256))
    with pytest.raises(ValueError, match="--max"):
        ShapeProfile.parse("1x1x1", "2x2x2", "big")


def test_builder_options_are_frozen_validated_and_hashable():
    opts = BuilderOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.workspace_mib = 2  # type: ignore[misc]
    assert hash(opts) == hash(BuilderOptions())
    assert len({opts, BuilderOptions(), BuilderOptions(weak_fp16=True)}) == 2
    with pytest.raises(ValueError, match="workspace_mib"):
        BuilderOptions(workspace_mib=0)
    with pytest.raises(ValueError, match="optimization_level"):
        BuilderOptions(optimization_level=6)
    with pytest.raises(TypeError, match="ShapeProfile"):
        BuilderOptions(profile=((1, 1, 1), (2, 2, 2), (3, 3, 3)))


def test_cache_tag_is_stable_and_keys_everything():
    base = BuilderOptions()
    tag = base.cache_tag("abc", "10.3.0", "NVIDIA H100")
    assert tag == BuilderOptions().cache_tag("abc", "10.3.0", "NVIDIA H100")
    assert len(tag) == 16 and int(tag, 16) >= 0
    others = {
        base.cache_tag("abd", "10.3.0", "NVIDIA H100"),
        base.cache_tag("abc", "11.0.0", "NVIDIA H100"),
        base.cache_tag("abc", "10.3.0", "Orin"),
        BuilderOptions(workspace_mib=2048).cache_tag("abc", "10.3.0", "NVIDIA H100"),
        BuilderOptions(optimization_level=5).cache_tag("abc", "10.3.0", "NVIDIA H100"),
        BuilderOptions(weak_fp16=True).cache_tag("abc", "10.3.0", "NVIDIA H100"),
        BuilderOptions(plugin=True).cache_tag("abc", "10.3.0", "NVIDIA H100"),
        BuilderOptions(profile=ShapeProfile(opt=(8, 8, 64))).cache_tag(
            "abc", "10.3.0", "NVIDIA H100"
        ),
    }
    assert tag not in others and len(others) == 8
    assert engine_cache_path("c", "x/dmm_matcher.onnx", tag).name == f"dmm_matcher-{tag}.engine"


def _fake_trt(version: str):
    """A stand-in for the parts of the ``tensorrt`` module that the build uses."""
    m = types.SimpleNamespace(__version__=version)
    m.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    m.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32")
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    m.calls = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Input:
        def __init__(self, name):
            self.name, self.shape = name, (-1, -1, -1)

    class Network:
        num_inputs = 2

        def get_input(self, i):
            return Input(("cost", "x_init")[i])

    class Error:
        def __init__(self, i):
            self.i = i

        def desc(self):
            return f"unsupported thing number {self.i}"

        def node(self):
            return 10 + self.i

        def node_name(self):
            return f"/node_{self.i}"

        def node_operator(self):
            return "Unique"

        def code(self):
            return types.SimpleNamespace(name="UNSUPPORTED_NODE")

        def file(self):
            return "onnxOpImporters.cpp"

        def line(self):
            return 123

        def func(self):
            return "importUnique"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            m.calls.append(("parse", path))
            if m.fail_parse:
                self.num_errors = 2
                return False
            return True

        def get_error(self, i):
            return Error(i)

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+timed"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            m.calls.append(("profile", name, lo, opt, hi))

    class Config:
        builder_optimization_level = None

        def set_memory_pool_limit(self, pool, size):
            m.calls.append(("pool", pool, size))

        def set_flag(self, flag):
            m.calls.append(("flag", flag))

        def clear_flag(self, flag):
            m.calls.append(("clear_flag", flag))

        def add_optimization_profile(self, p):
            m.calls.append(("add_profile",))

        def create_timing_cache(self, data):
            m.calls.append(("timing_cache_in", bytes(data)))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            m.calls.append(("network_flags", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            m.calls.append(("build", config.builder_optimization_level))
            return b"PLAN"

    m.Logger, m.Builder, m.OnnxParser = Logger, Builder, OnnxParser
    m.init_libnvinfer_plugins = lambda logger, namespace: m.calls.append(("plugins", namespace))
    m.fail_parse = False
    return m


@pytest.mark.parametrize(
    ("version", "weak", "expected"),
    [
        ("10.3.0.26", False, (2, [])),  # 1 << STRONGLY_TYPED(=1)
        ("10.14.1", True, (0, ["FP16"])),
        ("11.0.0", False, (0, [])),
    ],
)
def test_network_setup_per_version(version, weak, expected):
    assert network_setup(_fake_trt(version), BuilderOptions(weak_fp16=weak)) == expected


def test_network_setup_refuses_what_the_version_lacks():
    with pytest.raises(ValueError, match="strongly typed networks only"):
        network_setup(_fake_trt("11.1.0"), BuilderOptions(weak_fp16=True))
    with pytest.raises(ValueError, match="TensorRT >= 10"):
        network_setup(_fake_trt("8.6.1"), BuilderOptions())


def test_parser_errors_are_shown_whole():
    fake = _fake_trt("10.3.0")
    parser = fake.OnnxParser(None, None)
    parser.num_errors = 2
    text = format_parser_errors(parser, "m.onnx")
    assert text.splitlines()[0] == "TensorRT's ONNX parser rejected m.onnx (2 error(s)):"
    for i in range(2):
        assert f"unsupported thing number {i}" in text
        assert f"node #{10 + i}" in text and f"'/node_{i}'" in text
    assert "op Unique" in text and "code UNSUPPORTED_NODE" in text
    assert "onnxOpImporters.cpp:123 importUnique" in text
    parser.num_errors = 0
    assert "without errors" in format_parser_errors(parser)


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    def use(version="10.3.0"):
        fake = _fake_trt(version)
        monkeypatch.setattr(trt_mod, "import_tensorrt", lambda: fake)
        monkeypatch.setattr(trt_mod, "gpu_name", lambda device=0: "Fake GPU")
        onnx_path = tmp_path / "m.onnx"
        onnx_path.write_bytes(b"not really onnx")
        return fake, onnx_path

    return use


def test_build_flow_profile_timing_and_engine_cache(fake_build, tmp_path):
    fake, onnx_path = fake_build("10.3.0")
    opts = BuilderOptions(
        profile=ShapeProfile((1, 1, 1), (4, 8, 64), (16, 16, 256)), workspace_mib=256
    )
    tc = tmp_path / "tc" / "timing.cache"
    cache = tmp_path / "cache"
    lines = []
    path = build_engine(
        onnx_path, tmp_path / "out.engine", opts, cache_dir=cache, timing_cache=tc, log=lines.append
    )
    assert path.read_bytes() == b"PLAN"
    assert ("network_flags", 2) in fake.calls
    assert ("pool", "WORKSPACE", 256 << 20) in fake.calls
    assert ("build", 3) in fake.calls
    # TensorRT's standard plugins are registered before the graph is parsed
    assert fake.calls.index(("plugins", "")) < next(
        i for i, c in enumerate(fake.calls) if c[0] == "parse"
    )
    assert not any(c[0] == "clear_flag" for c in fake.calls)  # trt-build keeps TF32 default
    for name in ("cost", "x_init"):
        assert ("profile", name, (1, 1, 1), (4, 8, 64), (16, 16, 256)) in fake.calls
    assert ("timing_cache_in", b"") in fake.calls
    assert tc.read_bytes() == b"+timed"
    assert len(list(cache.glob("m-*.engine"))) == 1
    # same key: copied from the cache, nothing parsed or built
    fake.calls.clear()
    again = build_engine(
        onnx_path,
        tmp_path / "again.engine",
        opts,
        cache_dir=cache,
        timing_cache=tc,
        log=lines.append,
    )
    assert again.read_bytes() == b"PLAN" and fake.calls == []
    assert "cache hit" in lines[-1]
    # another option: rebuilt, with the timing cache read back
    build_engine(
        onnx_path,
        tmp_path / "o5.engine",
        BuilderOptions(optimization_level=5),
        cache_dir=cache,
        timing_cache=tc,
        log=lines.append,
    )
    assert ("build", 5) in fake.calls and ("timing_cache_in", b"+timed") in fake.calls
    assert len(list(cache.glob("m-*.engine"))) == 2


def test_build_flow_tensorrt_11_and_weak_fp16(fake_build, tmp_path):
    fake, onnx_path = fake_build("11.0.0")
    build_engine(onnx_path, tmp_path / "e.engine", BuilderOptions(), log=lambda s: None)
    assert ("network_flags", 0) in fake.calls
    assert not [c for c in fake.calls if c[0] == "flag"]
    with pytest.raises(ValueError, match="strongly typed"):
        build_engine(onnx_path, tmp_path / "e.engine", BuilderOptions(weak_fp16=True))
    fake, onnx_path = fake_build("10.8.0")
    build_engine(onnx_path, None, BuilderOptions(weak_fp16=True), log=lambda s: None)
    assert ("flag", "FP16") in fake.calls and ("network_flags", 0) in fake.calls
    assert onnx_path.with_suffix(".engine").read_bytes() == b"PLAN"


def test_build_flow_parser_failure(fake_build, tmp_path):
    fake, onnx_path = fake_build()
    fake.fail_parse = True
    with pytest.raises(TensorRTBuildError) as info:
        build_engine(onnx_path, tmp_path / "e.engine")
    assert "unsupported thing number 0" in str(info.value)
    assert "unsupported thing number 1" in str(info.value)
    assert not (tmp_path / "e.engine").exists()


def test_missing_onnx_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_engine(tmp_path / "nope.onnx")


def test_without_tensorrt_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError, match=r"pip install 'dmm-deploy\[trt\]'"):
        import_tensorrt()
    assert "dmm-deploy[trt]" in INSTALL_HINT


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None,
    reason="TensorRT is installed: the missing-TensorRT message cannot be shown",
)
def test_cli_without_tensorrt_prints_one_line(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmm_deploy.cli",
            "trt-build",
            str(onnx_path),
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "dmm-deploy[trt]" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "dmm_deploy.cli", "trt-build", str(onnx_path), "--min", "4x4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--min must be BxNxM" in proc.stderr


# -- with TensorRT and a GPU ----------------------------------------------------------------


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "mixed", "fp16"])
def test_real_engine_build_and_run(tmp_path, precision):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cuda_device = torch.device("cuda")
    from dmm_deploy.export import ExportOptions, export_matcher
    from dmm_deploy.export.onnx_export import random_problems
    from dmm_deploy.export.tensorrt import EngineRunner
    from dmm_deploy.matching import match_reference

    onnx_path = tmp_path / "m.onnx"
    export_matcher(onnx_path, ExportOptions(n_grad=8, n_proj=3, precision=precision))
    opts = BuilderOptions(profile=ShapeProfile((1, 1, 1), (4, 8, 64), (8, 16, 128)))
    engine = build_engine(
        onnx_path,
        tmp_path / "m.engine",
        opts,
        cache_dir=tmp_path / "c",
        timing_cache=tmp_path / "t.cache",
    )
    runner = EngineRunner(engine)
    assert runner.input_names == ["cost", "x_init"] and runner.output_names == ["assignment"]
    cost, x_init = random_problems((3, 5, 40), seed=0)
    out = runner(cost=cost, x_init=x_init)["assignment"]  # numpy in, numpy out
    dt = torch.float32 if precision == "fp32" else torch.float16
    want = match_reference(
        torch.from_numpy(cost).to(dt).double(), torch.from_numpy(x_init).to(dt).double(), 8, 3, 0.01
    ).numpy()
    atol = {"fp32": 1e-5, "mixed": 1e-3, "fp16": 2e-2}[precision]
    assert np.abs(out.astype(np.float64) - want).max() <= atol
    got = runner(
        cost=torch.from_numpy(cost).to(cuda_device), x_init=torch.from_numpy(x_init).to(cuda_device)
    )
    torch.cuda.synchronize()
    np.testing.assert_allclose(got["assignment"].cpu().numpy(), out)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        runner(cost=np.zeros((9, 5, 40), np.float32), x_init=np.zeros((9, 5, 40), np.float32))


# -- static profiles, the plugin's cache key, the runner's stream and device ------------------


class _StaticNetwork:
    num_inputs = 2

    def get_input(self, i):
        return types.SimpleNamespace(name=("cost", "x_init")[i], shape=(4, 8, 64))


def test_static_export_builds_a_profile_of_exactly_its_shape(fake_build, tmp_path, monkeypatch):
    import onnx

    from dmm_deploy.export.trt_plugin import make_plugin_model

    fake, onnx_path = fake_build("10.9.0")
    onnx.save(make_plugin_model(static_shape=(4, 8, 64)), str(onnx_path))
    lines = []
    build_engine(onnx_path, tmp_path / "s.engine", BuilderOptions(), log=lines.append)
    for name in ("cost", "x_init"):
        assert ("profile", name, (4, 8, 64), (4, 8, 64), (4, 8, 64)) in fake.calls
    assert any("min = opt = max = 4x8x64" in line for line in lines)
    # without onnx the parsed network's static input shapes give the same profile
    fake, onnx_path = fake_build("10.9.0")
    onnx.save(make_plugin_model(static_shape=(4, 8, 64)), str(onnx_path))
    monkeypatch.setattr(trt_mod, "static_profile", lambda path: None)
    monkeypatch.setattr(fake.Builder, "create_network", lambda self, flags: _StaticNetwork())
    build_engine(onnx_path, tmp_path / "t.engine", BuilderOptions(), log=lines.append)
    for name in ("cost", "x_init"):
        assert ("profile", name, (4, 8, 64), (4, 8, 64), (4, 8, 64)) in fake.calls
    monkeypatch.undo()
    fake, onnx_path = fake_build("10.9.0")
    onnx.save(make_plugin_model(static_shape=(4, 8, 64)), str(onnx_path))
    with pytest.raises(ValueError, match="static shape 4x8x64"):
        other = ShapeProfile((1, 1, 1), (4, 8, 64), (8, 8, 64))
        build_engine(onnx_path, tmp_path / "s.engine", BuilderOptions(profile=other))


def test_plugin_engine_cache_keys_kernel_source_triton_and_ptx(fake_build, tmp_path, monkeypatch):
    pytest.importorskip("triton")
    import onnx
    import triton

    from dmm_deploy.export import _plugin_kernel, trt_plugin
    from dmm_deploy.export.trt_plugin import make_plugin_model, plugin_cache_fields

    fake, onnx_path = fake_build("10.9.0")
    onnx.save(make_plugin_model(max_n=8, max_m=64), str(onnx_path))
    fields = plugin_cache_fields(onnx_path, 80)
    assert set(fields) == {"kernel_source", "triton", "ptx"}
    assert fields["triton"] == triton.__version__
    assert fields["ptx"] == trt_plugin.plugin_kernel(80, 8, 64, 0.01, "fp32").digest
    assert plugin_cache_fields(onnx_path, 90)["ptx"] != fields["ptx"]
    registered = []
    monkeypatch.setattr(trt_mod, "gpu_arch", lambda device=0: 80)
    monkeypatch.setattr(trt_plugin, "register_plugin", lambda **kw: registered.append(kw))
    opts = BuilderOptions(profile=ShapeProfile((1, 1, 1), (4, 4, 32), (16, 8, 64)), plugin=True)
    cache = tmp_path / "cache"

    def build():
        fake.calls.clear()
        build_engine(onnx_path, tmp_path / "p.engine", opts, cache_dir=cache, log=lambda s: None)
        return bool(fake.calls)  # True: built; False: taken from the cache

    assert build() and registered and not build()
    monkeypatch.setattr(_plugin_kernel, "kernel_source_digest", lambda: "changed kernel")
    assert build() and not build()
    monkeypatch.setattr(triton, "__version__", "3.7.1")
    assert build() and not build()
    assert len(list(cache.glob("m-*.engine"))) == 3


def _fake_runtime_trt(calls):
    """A stand-in for the parts of ``tensorrt`` the runner uses."""
    m = types.SimpleNamespace(__version__="10.9.0")
    m.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    m.nptype = lambda t: np.float32

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Context:
        def __init__(self):
            self.shapes = {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = shape
            return True

        def set_tensor_address(self, name, ptr):
            calls.append(("address", name))

        def get_tensor_shape(self, name):
            return self.shapes["cost"]

        def execute_async_v3(self, stream):
            calls.append(("execute", stream, calls_device[-1] if calls_device else None))
            return True

    class Engine:
        num_io_tensors = 3

        def get_tensor_name(self, i):
            return ("cost", "x_init", "assignment")[i]

        def get_tensor_mode(self, name):
            return "out" if name == "assignment" else "in"

        def get_tensor_dtype(self, name):
            return "FLOAT"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            calls.append(("deserialize", calls_device[-1] if calls_device else None))
            return Engine()

    calls_device = []
    m.Logger, m.Runtime, m.calls_device = Logger, Runtime, calls_device
    return m


def test_runner_uses_its_own_stream_on_its_device(monkeypatch):
    import contextlib

    calls = []
    fake = _fake_runtime_trt(calls)
    monkeypatch.setattr(trt_mod, "import_tensorrt", lambda: fake)

    class Stream:
        def __init__(self, device=None, handle=0):
            self.device, self.cuda_stream = device, handle or 0x5EED

        def wait_stream(self, other):
            calls.append(("wait", self.cuda_stream, other.cuda_stream))

        def synchronize(self):
            calls.append(("sync", self.cuda_stream))

    @contextlib.contextmanager
    def device(d):
        fake.calls_device.append(d)
        try:
            yield
        finally:
            fake.calls_device.pop()

    caller = Stream(handle=0)
    caller.cuda_stream = 0  # the legacy default stream
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: caller)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: calls.append(("keep", s)))
    runner = trt_mod.EngineRunner(b"PLAN", device=1)
    assert runner.device == torch.device("cuda", 1)
    assert ("deserialize", runner.device) in calls
    assert runner.stream.device == runner.device and runner.stream.cuda_stream != 0
    # tensors stay on the CPU here (no GPU); everything else is the runner's own flow
    monkeypatch.setattr(runner, "_to_device", lambda v, name: v.float().contiguous())
    monkeypatch.setattr(runner, "_empty", lambda shape, name: torch.empty(shape))
    calls.clear()
    out = runner.run(cost=np.zeros((2, 3, 4), np.float32), x_init=np.zeros((2, 3, 4), np.float32))
    assert out["assignment"].shape == (2, 3, 4)
    assert ("execute", 0x5EED, runner.device) in calls
    order = [c[0] for c in calls]
    assert order.index("wait") < order.index("execute")  # our stream waits for the caller's
    assert ("wait", 0, 0x5EED) in calls  # and the caller's waits for ours after
    assert ("sync", 0x5EED) in calls  # numpy results: synchronized on our stream
    assert [c for c in calls if c[0] == "keep"] == [("keep", runner.stream)] * 3


# -- the command line: output paths, --overwrite, argument checks ----------------------------


def _cli(capsys, *argv):
    from dmm_deploy.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _no_tensorrt(monkeypatch):
    def refuse():
        raise AssertionError("TensorRT imported before the arguments were checked")

    monkeypatch.setattr(trt_mod, "import_tensorrt", refuse)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "{onnx}"], r"--engine .*m\.onnx is the ONNX file; choose another file"),
        (["--engine", "{tmp}/d"], r"--engine .*d is a folder; expected a file name"),
        (["--engine", ""], r"argument --engine: expected a file name, got ''"),
        (["--engine", "{tmp}/new/"], r"argument --engine: expected a file name, got '.*new/'"),
        (["--engine", "{tmp}/afile/x.engine"], r"--engine .*x\.engine lies below the file .*afile"),
        (["--engine", "{tmp}/afile"], r"--engine .*afile exists: pass --overwrite to replace it"),
        (["--engine", "{tmp}/d", "--overwrite"], r"--engine .*d is a folder"),
        (["--cache-dir", "{tmp}/afile"], r"--cache-dir .*afile is a file; expected a folder"),
        (["--cache-dir", ""], r"argument --cache-dir: expected a folder, got ''"),
        (["--timing-cache", "{onnx}"], r"--timing-cache .*m\.onnx is the ONNX file"),
        (["--timing-cache", "{tmp}/o.engine"], r"--timing-cache .*o\.engine is the --engine file"),
        (["--timing-cache", "{tmp}/d"], r"--timing-cache .*d is a folder"),
        (["--workspace-mib", "0"], r"argument --workspace-mib: expected a positive integer"),
        (["--opt-level", "6"], r"argument --opt-level: invalid choice: 6"),
    ],
)
def test_trt_build_refuses_output_paths_before_tensorrt(
    monkeypatch, capsys, tmp_path, args, message
):
    _no_tensorrt(monkeypatch)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")
    (tmp_path / "d").mkdir()
    (tmp_path / "afile").write_bytes(b"mine")
    args = [a.format(onnx=onnx_path, tmp=tmp_path) for a in args]
    if "--engine" not in args:
        args += ["--engine", tmp_path / "o.engine"]
    if "--cache-dir" not in args:
        args += ["--cache-dir", tmp_path / "cache"]
    with pytest.raises(SystemExit) if "argument" in message else _nullcontext() as exit_:
        code, _, err = _cli(capsys, "trt-build", onnx_path, *args)
    if exit_ is not None:
        code, err = exit_.value.code, capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert onnx_path.read_bytes() == b"graph" and (tmp_path / "afile").read_bytes() == b"mine"
    assert not (tmp_path / "o.engine").exists() and not (tmp_path / "cache").exists()


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def test_trt_build_default_engine_is_not_the_input(monkeypatch, capsys, tmp_path):
    _no_tensorrt(monkeypatch)
    onnx_path = tmp_path / "v2.engine"  # the default --engine: this very path
    onnx_path.write_bytes(b"graph")
    code, _, err = _cli(capsys, "trt-build", onnx_path, "--cache-dir", tmp_path / "c")
    assert code == 2 and err.count("\n") == 1
    assert "--engine defaults to the ONNX path with .engine" in err and "pass --engine" in err
    assert onnx_path.read_bytes() == b"graph"


def test_trt_build_overwrite_and_atomic_writes(fake_build, capsys, tmp_path):
    fake, onnx_path = fake_build()
    engine = tmp_path / "out.engine"
    engine.write_bytes(b"OLD")
    common = ["--engine", engine, "--cache-dir", tmp_path / "c", "--timing-cache", tmp_path / "t"]
    code, _, err = _cli(capsys, "trt-build", onnx_path, *common)
    assert code == 2 and "pass --overwrite" in err and fake.calls == []
    assert engine.read_bytes() == b"OLD"
    code, out, _ = _cli(capsys, "trt-build", onnx_path, *common, "--overwrite")
    assert code == 0 and engine.read_bytes() == b"PLAN" and f"engine    {engine}" in out
    # a cache hit replaces an existing engine only with --overwrite too
    engine.write_bytes(b"OLD")
    fake.calls.clear()
    code, _, err = _cli(capsys, "trt-build", onnx_path, *common)
    assert code == 2 and engine.read_bytes() == b"OLD"
    code, out, _ = _cli(capsys, "trt-build", onnx_path, *common, "--overwrite")
    assert code == 0 and "cache hit" in out and fake.calls == []
    assert engine.read_bytes() == b"PLAN"
    # no temporary file is left beside the engine or in the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "m.onnx", "out.engine", "t"]
    assert [p.suffix for p in (tmp_path / "c").iterdir()] == [".engine"]
    # a link is never replaced, even with --overwrite (one to the ONNX file is the ONNX file)
    target = tmp_path / "mine.bin"
    target.write_bytes(b"mine")
    for dest in (target, onnx_path):
        link = tmp_path / f"link-{dest.stem}.engine"
        link.symlink_to(dest)
        code, _, err = _cli(capsys, "trt-build", onnx_path, "--engine", link, "--overwrite")
        want = "is a symbolic link" if dest == target else "is the ONNX file"
        assert code == 2 and want in err, err
    assert target.read_bytes() == b"mine" and onnx_path.read_bytes() == b"not really onnx"


def test_build_engine_write_is_atomic(fake_build, tmp_path, monkeypatch):
    fake, onnx_path = fake_build()
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"OLD")

    def fail(self, network, config):
        raise RuntimeError("builder ran out of something")

    monkeypatch.setattr(fake.Builder, "build_serialized_network", fail)
    with pytest.raises(RuntimeError):
        build_engine(onnx_path, engine, log=lambda s: None)
    assert engine.read_bytes() == b"OLD"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.engine", "m.onnx"]


def test_build_engine_refuses_the_onnx_file_as_output(fake_build, tmp_path):
    fake, onnx_path = fake_build()
    with pytest.raises(ValueError, match=r"engine path .* is the ONNX file"):
        build_engine(onnx_path, onnx_path)
    with pytest.raises(ValueError, match=r"timing cache .* is the ONNX file"):
        build_engine(onnx_path, tmp_path / "e.engine", timing_cache=onnx_path)
    moved = tmp_path / "v2.engine"
    onnx_path.rename(moved)
    with pytest.raises(ValueError, match="is the ONNX file"):
        build_engine(moved)  # the default engine path is the input itself
    assert moved.read_bytes() == b"not really onnx" and fake.calls == []


def _build_engine_script():
    from pathlib import Path

    path = Path(__file__).parents[1] / "export" / "build_engine.py"
    spec = importlib.util.spec_from_file_location("_build_engine_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "error",
    [
        IsADirectoryError(21, "Is a directory", "dir"),
        PermissionError(13, "Permission denied", "x.engine"),
        TensorRTBuildError("TensorRT's ONNX parser rejected m.onnx (2 error(s)):\n  one\n  two"),
    ],
)
def test_build_engine_script_prints_one_line(monkeypatch, capsys, tmp_path, error):
    script = _build_engine_script()

    def fail(args):
        raise error

    monkeypatch.setattr(script, "run_build", fail)
    assert script.main([str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("build_engine: error: ") and err.count("\n") == 1, err


def test_build_engine_script_checks_paths_in_one_line(monkeypatch, capsys, tmp_path):
    _no_tensorrt(monkeypatch)
    script = _build_engine_script()
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")
    (tmp_path / "d").mkdir()
    assert script.main([str(onnx_path), "--engine", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--engine" in err and "is a folder" in err
    with pytest.raises(SystemExit) as info:
        script.main([str(onnx_path), "--engine", ""])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "argument --engine" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-grad", "0"], "argument --n-grad: expected a positive integer, got '0'"),
        (["--n-proj", "-1"], "argument --n-proj: expected a positive integer, got '-1'"),
        (["--lr", "nan"], "argument --lr: expected a positive finite number, got 'nan'"),
        (["--lr", "0"], "argument --lr: expected a positive finite number, got '0'"),
        (["--lr", "inf"], "argument --lr: expected a positive finite number, got 'inf'"),
        (["--repeat", "0"], "argument --repeat: expected a positive integer, got '0'"),
        (["--n-grad", "1001"], "argument --n-grad: expected an integer in 1..1000, got '1001'"),
        (["--n-proj", "101"], "argument --n-proj: expected an integer in 1..100, got '101'"),
        (["--lr", "1e39"], "argument --lr: expected a positive finite number in float32's range"),
    ],
)
def test_trt_run_checks_its_arguments_like_export(monkeypatch, capsys, tmp_path, args, message):
    _no_tensorrt(monkeypatch)
    with pytest.raises(SystemExit) as info:
        _cli(capsys, "trt-run", tmp_path / "e.engine", *args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_trt_run_checks_are_exports_checks():
    """trt-run and export share one definition of the n_grad, n_proj and lr checks."""
    from dmm_deploy.export import engine_job, matcher_job

    assert (matcher_job.MAX_N_GRAD, matcher_job.MAX_N_PROJ) == (1000, 100)
    assert matcher_job._int_in is engine_job._int_in
    assert matcher_job._positive_float is engine_job._positive_float


def test_plugin_export_refuses_counts_beyond_int32(tmp_path):
    from dmm_deploy.export.engine_job import INT32_MAX, run_plugin_export
    from dmm_deploy.export.onnx_export import ExportOptions

    for field_name, flag in (("n_grad", "--n-grad"), ("n_proj", "--n-proj")):
        options = ExportOptions(plugin=True, **{field_name: INT32_MAX + 1})
        with pytest.raises(ValueError, match=f"{flag} 2147483648 is too large for --plugin"):
            run_plugin_export(options, tmp_path / "p.onnx", log=lambda s: None, archs=())
        assert not (tmp_path / "p.onnx").exists()
