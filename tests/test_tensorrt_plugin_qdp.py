"""The plugin through NVIDIA's own ``tensorrt.plugin`` package, over a stand-in TensorRT core.

``tensorrt-cu12-bindings`` (in the ``test`` extra) ships NVIDIA's pure-Python quickly
deployable plugin package; its compiled core needs libnvinfer, so ``tests/trt_standin.py``
stands in for the core and NVIDIA's code runs unchanged: ``register_plugin()`` passes its
signature validation (``_validate.py``), and the builder's calls (create strict-AOT, output
types and shapes, type combinations, tactics, launch parameters, kernel) give launch
parameters that are checked for several shapes and a PTX entry whose parameters are exactly
the arguments TensorRT passes.
"""

import importlib.util
import platform
import re
import sys

import pytest

from dmm_deploy.export import _plugin_kernel as pk
from dmm_deploy.export import trt_plugin
from dmm_deploy.export.trt_plugin import PLUGIN_ID, launch_config

pytest.importorskip("triton")

_WHEEL_PLATFORMS = {("linux", "x86_64"), ("linux", "aarch64")}


def _require_bindings() -> None:
    if importlib.util.find_spec("tensorrt_bindings") is not None:
        return
    if (sys.platform, platform.machine()) in _WHEEL_PLATFORMS:
        pytest.fail("tensorrt-cu12-bindings is in the test extra: pip install -e '.[test]'")
    pytest.skip(f"no tensorrt-cu12-bindings wheel for {sys.platform}/{platform.machine()}")


@pytest.fixture
def trt_plugin_pkg(monkeypatch):
    """NVIDIA's tensorrt.plugin over a fresh stand-in core; the project's registration reset."""
    _require_bindings()
    from trt_standin import load_plugin_package

    core, plugin = load_plugin_package(monkeypatch)
    monkeypatch.setattr(trt_plugin, "_registered", False)
    return core, plugin


ATTRS = {"n_grad": 40, "n_proj": 5, "lr": 0.01, "block_n": 16, "block_m": 512}
SHAPES = [(1, 1, 1), (3, 5, 77), (37, 16, 512), (64, 9, 300)]


def _entry_types(ptx: str) -> list[str]:
    return [t for t, _ in pk.entry_params(ptx)]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_register_and_aot_through_nvidia_plugin_package(trt_plugin_pkg, precision):
    core, _plugin = trt_plugin_pkg
    trt_plugin.register_plugin(arch=80)
    from trt_standin import drive_aot_plugin

    dtype = core.float32 if precision == "fp32" else core.float16
    got = drive_aot_plugin(core, PLUGIN_ID, ATTRS, dtype)
    assert got["out_types"] == [dtype]
    # the autotune offers exactly the two uniform linear type combinations
    lin = core.TensorFormat.LINEAR
    assert set(got["combinations"]) == {
        ((core.float32, lin),) * 3,
        ((core.float16, lin),) * 3,
    }
    problems, warps = launch_config(16, 512)
    launch = got["launch"]
    for b, n, m in SHAPES:
        env = {"B": b, "n": n, "m": m}
        assert launch.grid_x.expr.evaluate(env) == -(-b // problems)
        for axis in ("grid_y", "grid_z", "block_y", "block_z"):
            assert getattr(launch, axis).expr.evaluate(env) == 1
        assert launch.block_x.expr.evaluate(env) == 32 * warps
        assert [e.evaluate(env) for e in got["extra"]] == [b, n, m, 40, 5]
        assert [e.evaluate(env) for e in got["out_exprs"][0]] == [b, n, m]
    kernel = trt_plugin.plugin_kernel(80, 16, 512, 0.01, precision)
    assert launch.shared_mem.expr.evaluate({}) == kernel.shared
    assert got["kernel_name"] == kernel.name
    # the PTX entry takes exactly what TensorRT passes: 2 input pointers, 5 int32, 1 output
    assert _entry_types(got["ptx"]) == got["passed_types"]
    assert got["passed_types"] == ["u64", "u64", "u32", "u32", "u32", "u32", "u32", "u64"]
    assert re.search(r"^\.version 8\.0$", got["ptx"], re.M)
    assert re.search(r"^\.target sm_80$", got["ptx"], re.M)


def test_registration_faults_are_those_nvidia_validation_reports(trt_plugin_pkg):
    """The checks that caught the old registration are live: a bare ``list`` autotune
    annotation and a missing aot_impl return annotation are refused by NVIDIA's code."""
    _, trtp = trt_plugin_pkg

    @trtp.register("dmm_test::probe")
    def _desc(x: trtp.TensorDesc, k: int) -> trtp.TensorDesc:
        return x.like()

    with pytest.raises(ValueError, match="AutoTuneCombination"):

        @trtp.autotune("dmm_test::probe")
        def _tune(x: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc]) -> list:
            return []

    with pytest.raises(ValueError, match="No return annotation"):

        @trtp.aot_impl("dmm_test::probe")
        def _aot(x: trtp.TensorDesc, k: int, outputs: tuple[trtp.TensorDesc], tactic: int):
            return None

    # postponed (string) annotations: older releases raised TypeError from issubclass, this
    # one a ValueError; either way the registration is refused
    with pytest.raises((TypeError, ValueError)):

        @trtp.register("dmm_test::stringly")
        def _desc2(x: "trtp.TensorDesc", k: int) -> "trtp.TensorDesc":
            return x.like()


def test_registration_is_idempotent_and_refuses_old_tensorrt(trt_plugin_pkg, monkeypatch):
    core, _ = trt_plugin_pkg
    trt_plugin.register_plugin(arch=80)
    trt_plugin.register_plugin(arch=80)  # no second registration (NVIDIA's would raise)
    assert core.get_plugin_registry().get_creator("dmm_match", "1", "dmm_deploy") is not None
    monkeypatch.setattr(trt_plugin, "_registered", False)
    monkeypatch.setattr(core, "__version__", "10.3.0.26")
    with pytest.raises(ValueError, match=r"TensorRT 10\.3\.0\.26 with Triton \d"):
        trt_plugin.register_plugin(arch=80)


@pytest.mark.parametrize(
    ("trt_version", "triton_version", "cuda", "ok"),
    [
        ("10.9.0.34", "3.2.0", 12, True),
        ("10.13.3", "3.3.1", 12, True),
        ("11.0.0", "3.5.0", 13, True),
        ("11.4.0.106", "3.8.0", 12, True),
        ("10.8.0", "3.2.0", 12, False),
        ("10.3.0.26", "3.8.0", 12, False),
        ("11.0.0", "3.1.0", 12, False),
        ("11.0.0", "3.9.0", 12, False),
        ("10.9.0", "3.2.0", 11, False),
    ],
)
def test_supported_pairs(trt_version, triton_version, cuda, ok):
    if ok:
        pk.check_supported_pair(trt_version, triton_version, cuda)
        return
    with pytest.raises(ValueError) as e:
        pk.check_supported_pair(trt_version, triton_version, cuda)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"TensorRT {trt_version}" in msg and f"Triton {triton_version}" in msg


_PTX = """.version 8.8
.target sm_80
.address_size 64
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .u64 .ptr .global .align 1 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3,
\t.param .u64 .ptr .global .align 1 k_param_4
)
{
\tld.param.u64 %rd1, [k_param_0];
\tld.param.u32 %r1, [k_param_1];
\tld.param.u64 %rd2, [k_param_2];
\tret;
}
"""


def test_scratch_parameters_are_stripped_only_when_unused():
    ptx, stripped = pk._strip_scratch_params(_PTX, 3, "3.8.0")
    assert stripped == 2
    assert [n for _, n in pk.entry_params(ptx)] == ["k_param_0", "k_param_1", "k_param_2"]
    assert ptx.split("{", 1)[1] == _PTX.split("{", 1)[1]  # the body is untouched
    read = _PTX.replace("\tret;", "\tld.param.u64 %rd3, [k_param_4];\n\tret;")
    with pytest.raises(RuntimeError, match="reads Triton's scratch parameter k_param_4"):
        pk._strip_scratch_params(read, 3, "3.8.0")
    with pytest.raises(RuntimeError, match="expected 3 kernel arguments and 1 scratch"):
        pk._strip_scratch_params(_PTX, 3, "3.4.0")  # 3.3/3.4 append one pointer only
    assert pk._strip_scratch_params(_PTX, 5, "3.2.0") == (_PTX, 0)


@pytest.mark.slow
def test_compiled_ptx_fits_tensorrt_for_every_arch():
    for arch in (87, 90):
        k = trt_plugin.plugin_kernel(arch, 8, 64, 0.01, "fp32")
        assert k.params == pk.TENSORRT_PARAM_TYPES
        assert k.ptx_version == 80
        assert f".target sm_{arch}" in k.ptx
    with pytest.raises(ValueError, match="arch must be one of"):
        pk.compile_plugin_ptx(75, 8, 64, 0.01)


def test_unsupported_triton_is_refused_before_compiling(monkeypatch):
    monkeypatch.setattr(pk.triton, "__version__", "3.9.0")
    with pytest.raises(RuntimeError, match=r"Triton 3\.2 to 3\.8, not 3\.9\.0"):
        pk.compile_plugin_ptx(80, 8, 64, 0.01)


def test_kernel_source_digest_is_stable():
    assert pk.kernel_source_digest() == pk.kernel_source_digest()
    assert len(pk.kernel_source_digest()) == 64


@pytest.mark.gpu
def test_plugin_ptx_runs_with_the_arguments_tensorrt_passes():
    """On a GPU: the driver loads the PTX (ISA 8.0) and the kernel, launched the way TensorRT
    launches an AOT plugin (exactly the 8 arguments, the launch parameters of the AOT
    implementation, dynamic shared memory), matches the float64 reference."""
    import ctypes
    import ctypes.util

    import torch

    from dmm_deploy.matching import match_reference

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    if arch not in pk.PTX_ISA:
        pytest.skip(f"the plugin kernel is built for {sorted(pk.PTX_ISA)}, not sm_{arch}")
    cuda = ctypes.CDLL(ctypes.util.find_library("cuda") or "libcuda.so.1")

    def check(status):
        assert status == 0, f"CUDA driver error {status}"

    torch.empty(1, device="cuda")  # the primary context, current
    b, n, m, n_grad, n_proj, lr = 37, 5, 40, 8, 3, 0.05
    kernel = trt_plugin.plugin_kernel(arch, 8, 64, lr, "fp32")
    module, fn = ctypes.c_void_p(), ctypes.c_void_p()
    check(cuda.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(kernel.ptx.encode())))
    check(cuda.cuModuleGetFunction(ctypes.byref(fn), module, kernel.name.encode()))
    gen = torch.Generator(device="cuda").manual_seed(0)
    cost = -torch.rand(b, n, m, device="cuda", generator=gen)
    x_init = torch.rand(b, n, m, device="cuda", generator=gen) / m
    out = torch.full_like(cost, float("nan"))
    args = [
        ctypes.c_uint64(cost.data_ptr()),
        ctypes.c_uint64(x_init.data_ptr()),
        *(ctypes.c_int32(v) for v in (b, n, m, n_grad, n_proj)),
        ctypes.c_uint64(out.data_ptr()),
    ]
    params = (ctypes.c_void_p * len(args))(
        *(ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in args)
    )
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    grid = -(-b // kernel.problems)
    cuda.cuLaunchKernel.argtypes = [ctypes.c_void_p, *[ctypes.c_uint] * 7, ctypes.c_void_p]
    cuda.cuLaunchKernel.argtypes += [ctypes.c_void_p, ctypes.c_void_p]
    check(
        cuda.cuLaunchKernel(
            fn, grid, 1, 1, 32 * kernel.num_warps, 1, 1, kernel.shared, stream, params, None
        )
    )
    torch.cuda.synchronize()
    want = match_reference(cost.double().cpu(), x_init.double().cpu(), n_grad, n_proj, lr)
    assert (out.double().cpu() - want).abs().max().item() <= 1e-5
    check(cuda.cuModuleUnload(module))
