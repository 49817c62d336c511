"""The matcher as a TensorRT plugin node: the ONNX node, the AOT kernel's PTX, the adapter.

What runs here: the node's attributes (what TensorRT's ONNX parser reads), the compatibility
check, the Triton kernel compiled to PTX for sm_80/sm_87/sm_90 without a GPU, and the
adapter kernel (TensorRT's argument order) against the reference in Triton's interpreter.
The TensorRT build and run need TensorRT >= 10.9 and a GPU (marked, skipped here).
"""

import argparse
import os
import re
import subprocess
import sys

import onnx
import pytest
from onnx import AttributeProto, TensorProto

from dmm_deploy.export import ExportOptions, check_tensorrt, export_matcher
from dmm_deploy.export.matcher_job import add_export_args, options_from_args, run_export
from dmm_deploy.export.tensorrt import BuilderOptions, ShapeProfile, build_engine
from dmm_deploy.export.trt_plugin import (
    PLUGIN_DOMAIN,
    PLUGIN_OP,
    check_plugin_profile,
    launch_config,
    make_plugin_model,
)

pytest.importorskip("triton")


def _node(model):
    (node,) = model.graph.node
    return node, {a.name: a for a in node.attribute}


def test_plugin_node_has_what_the_parser_needs():
    model = make_plugin_model(40, 5, 0.01, max_n=10, max_m=100)
    node, attrs = _node(model)
    # the parser looks the plugin up by op_type, plugin_version and plugin_namespace
    assert node.op_type == PLUGIN_OP == "dmm_match"
    assert node.domain == PLUGIN_DOMAIN == "dmm_deploy"
    assert attrs["plugin_namespace"].type == AttributeProto.STRING
    assert attrs["plugin_namespace"].s == b"dmm_deploy"
    assert attrs["plugin_version"].s == b"1"
    assert attrs["aot"].type == AttributeProto.INT and attrs["aot"].i == 1
    # plugin fields: ints arrive as INT32, floats as FLOAT32
    assert attrs["n_grad"].type == AttributeProto.INT and attrs["n_grad"].i == 40
    assert attrs["n_proj"].type == AttributeProto.INT and attrs["n_proj"].i == 5
    assert attrs["lr"].type == AttributeProto.FLOAT and attrs["lr"].f == pytest.approx(0.01)
    assert (attrs["block_n"].i, attrs["block_m"].i) == (16, 128)
    assert list(node.input) == ["cost", "x_init"] and list(node.output) == ["assignment"]
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 17), ("dmm_deploy", 1)}
    onnx.checker.check_model(model)
    for vi in (*model.graph.input, *model.graph.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT
        assert [d.dim_param for d in vi.type.tensor_type.shape.dim] == ["B", "n", "m"]


def test_plugin_node_half_and_static():
    model = make_plugin_model(3, 2, 0.1, half=True, static_shape=(4, 5, 33))
    _, attrs = _node(model)
    assert (attrs["block_n"].i, attrs["block_m"].i) == (8, 64)
    for vi in (*model.graph.input, *model.graph.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT16
        assert [d.dim_value for d in vi.type.tensor_type.shape.dim] == [4, 5, 33]
    with pytest.raises(ValueError, match="max_n"):
        make_plugin_model(max_n=65)
    with pytest.raises(ValueError, match="n_grad"):
        make_plugin_model(0, 5, 0.01)


def test_plugin_graph_compatibility():
    model = make_plugin_model()
    problems = check_tensorrt(model, "10.3")
    assert len(problems) == 1 and ">= 10.9" in problems[0]
    assert check_tensorrt(model, "10.9") == []
    assert check_tensorrt(model, "11.0") == []


def test_profile_must_fit_the_kernel_tile(tmp_path):
    path = tmp_path / "p.onnx"
    onnx.save(make_plugin_model(max_n=16, max_m=512), str(path))
    check_plugin_profile(path, ShapeProfile((1, 1, 1), (8, 8, 128), (64, 16, 512)))
    with pytest.raises(ValueError, match="m <= 512"):
        check_plugin_profile(path, ShapeProfile((1, 1, 1), (8, 8, 128), (64, 16, 600)))
    # build_engine refuses before it needs TensorRT
    opts = BuilderOptions(profile=ShapeProfile((1, 1, 1), (8, 8, 128), (8, 32, 128)), plugin=True)
    with pytest.raises(ValueError, match="n <= 16"):
        build_engine(path, tmp_path / "p.engine", opts)


def test_launch_config():
    assert launch_config(4, 8) == (16, 1)  # tiny problems packed, one warp
    assert launch_config(16, 512) == (1, 16)
    for bn, bm in ((1, 1), (8, 128), (64, 1024)):
        problems, warps = launch_config(bn, bm)
        assert problems & (problems - 1) == 0 and warps & (warps - 1) == 0
        assert 1 <= problems <= 16 and 1 <= warps <= 16


@pytest.mark.parametrize("arch", [80, 87, 90])
def test_kernel_compiles_to_ptx_without_a_gpu(arch):
    from dmm_deploy.export._plugin_kernel import compile_plugin_ptx, entry_params

    k = compile_plugin_ptx(arch, 8, 128, 0.01, dtype="fp16" if arch == 87 else "fp32")
    assert re.search(rf"^\.target sm_{arch}a?$", k.ptx, re.M)
    assert re.search(r"^\.version 8\.0$", k.ptx, re.M)  # CUDA 12.0's ISA, not Triton's
    assert k.name == "_dmm_match_trt_kernel" and f".entry {k.name}(" in k.ptx
    # TensorRT's order: input pointers, the extra int32 args (B, n, m, n_grad, n_proj), output;
    # nothing after (Triton's scratch pointers removed)
    assert [t for t, _ in entry_params(k.ptx)] == [
        "u64",
        "u64",
        "u32",
        "u32",
        "u32",
        "u32",
        "u32",
        "u64",
    ]


def test_adapter_kernel_matches_the_reference_in_the_interpreter(repo_root):
    code = """
import torch, triton
from dmm_deploy.export._plugin_kernel import _dmm_match_trt_kernel
from dmm_deploy.export.trt_plugin import launch_config
from dmm_deploy.matching import match_reference
worst = 0.0
for (B, n, m), (bn, bm) in (((5, 3, 6), (4, 8)), ((2, 1, 1), (1, 1)), ((3, 7, 5), (8, 8))):
    g = torch.Generator().manual_seed(B + n + m)
    c = -torch.rand(B, n, m, generator=g)
    x = torch.rand(B, n, m, generator=g) / m
    out = torch.full_like(c, float("nan"))
    P, _ = launch_config(bn, bm)
    _dmm_match_trt_kernel[(triton.cdiv(B, P),)](
        c, x, B, n, m, 4, 3, out, LR=0.05, PROBLEMS=P, BLOCK_N=bn, BLOCK_M=bm)
    ref = match_reference(c.double(), x.double(), 4, 3, 0.05)
    worst = max(worst, float((out.double() - ref).abs().max()))
print(worst)
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo_root,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) <= 1e-5


def test_export_with_plugin_option(tmp_path):
    model = export_matcher(tmp_path / "p.onnx", ExportOptions(plugin=True, precision="mixed"))
    node, _ = _node(model)
    assert node.op_type == "dmm_match"
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


@pytest.mark.slow
def test_export_job_plugin_report(tmp_path):
    parser = add_export_args(argparse.ArgumentParser())
    args = parser.parse_args(["--plugin", "--out", str(tmp_path / "p.onnx")])
    lines = []
    assert run_export(options_from_args(args), args.out, log=lines.append) == 0

    report = "\n".join(lines)
    for arch in (80, 87, 90):
        assert f"ptx       sm_{arch}" in report
    assert "tensorrt  10.9: OK" in report and "tensorrt  11.0: OK" in report
    assert "tensorrt  10.3: not a target" in report
    assert "8 entry parameters" in report and ".version 8.0" in report
    assert "result    OK" in report


def test_plugin_export_fails_with_exit_code_on_a_failing_check(tmp_path, monkeypatch):
    """Any failing check gives exit code 1 and 'result FAILED' (as the README says)."""
    from dmm_deploy.export import engine_job

    monkeypatch.setattr(engine_job, "PLUGIN_TENSORRT_VERSIONS", ("10.3",))
    lines = []
    options = ExportOptions(plugin=True)
    code = engine_job.run_plugin_export(options, tmp_path / "p.onnx", lines.append, archs=())
    assert code == 1 and lines[-1] == "result    FAILED"
    assert any(line.startswith("tensorrt  10.3: 1 problem(s)") for line in lines)


@pytest.mark.trt
@pytest.mark.gpu
def test_plugin_engine_builds_and_runs(tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    import torch

    from dmm_deploy.export.tensorrt import EngineRunner, trt_version_tuple

    if trt_version_tuple(trt.__version__) < (10, 9):
        pytest.skip(f"AOT plugins need TensorRT >= 10.9, found {trt.__version__}")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cuda_device = torch.device("cuda")

    from dmm_deploy.matching import match_reference

    path = tmp_path / "p.onnx"
    onnx.save(make_plugin_model(8, 3, 0.05, max_n=8, max_m=64), str(path))
    opts = BuilderOptions(profile=ShapeProfile((1, 1, 1), (4, 4, 32), (16, 8, 64)), plugin=True)
    engine = build_engine(path, tmp_path / "p.engine", opts)
    cost = -torch.rand(3, 5, 40, device=cuda_device)
    x_init = torch.rand(3, 5, 40, device=cuda_device) / 40
    out = EngineRunner(engine)(cost=cost, x_init=x_init)["assignment"]
    torch.cuda.synchronize()
    want = match_reference(cost.double(), x_init.double(), 8, 3, 0.05)
    assert (out.double() - want).abs().max().item() <= 1e-5
