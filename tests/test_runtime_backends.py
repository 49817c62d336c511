"""onnxruntime stage sessions: the cache of CPU-optimized graphs (written once, reused,
bit-identical results, skipped when the folder cannot be written, rebuilt when damaged)."""

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dmm_deploy.runtime.backends import OrtStage, optimized_graph_path  # noqa: E402
from dmm_deploy.runtime.bundle import StageSpec, TensorSpec, sha256_file  # noqa: E402


def _conv_stage(root):
    """Two 3x3 convolutions (8 -> 16 -> 8 channels, dynamic batch): a graph whose optimized
    form differs from the file (NCHWc layout on x86, fused activations)."""
    root.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    w1 = numpy_helper.from_array(g.standard_normal((16, 8, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(g.standard_normal((8, 16, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, 20, 24])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8, 20, 24])
    graph = helper.make_graph(nodes, "conv", [x], [y], initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = root / "conv.onnx"
    onnx.save(model, str(path))
    spec = _spec(
        "conv",
        [("x", ("B", 8, 20, 24))],
        [("y", ("B", 8, 20, 24))],
        sha256=sha256_file(path),
    )
    return path, spec


def _spec(name, inputs, outputs=(), sha256="0" * 64):
    """A float32 stage entry ``name.onnx`` with ``(name, shape)`` inputs and outputs."""
    return StageSpec(
        name=name,
        file=f"{name}.onnx",
        sha256=sha256,
        precision="fp32",
        opset=17,
        inputs=tuple(TensorSpec(n, "float32", shape) for n, shape in inputs),
        outputs=tuple(TensorSpec(n, "float32", shape) for n, shape in outputs),
        extra={},
    )


SPLIT = {"layout": "split", "size_divisible": 32, "min_size": 480, "max_size": 800}
"""The transform sizes of a split Mask R-CNN bundle's manifest (those axis_ranges reads)."""


@pytest.fixture()
def conv_stage(tmp_path):
    return _conv_stage(tmp_path / "bundle")


def _x():
    return np.random.default_rng(1).standard_normal((3, 8, 20, 24)).astype(np.float32)


def test_cache_is_written_once_reused_and_bit_identical(conv_stage, tmp_path):
    path, spec = conv_stage
    cache = tmp_path / "bundle" / "engines"
    plain = OrtStage(path, spec, threads=1, cache_dir=cache, optimized_cache=False)
    assert plain.optimized_path is None and not cache.exists()
    want = plain.run({"x": _x()})["y"]

    first = OrtStage(path, spec, threads=1, cache_dir=cache)
    target = optimized_graph_path(path, spec, cache)
    assert first.optimized_path == target and target.is_file()
    # the graph and its digest, no temporary left behind
    assert sorted(p.name for p in cache.iterdir()) == [target.name, target.name + ".sha256"]
    stamp = target.stat().st_mtime_ns
    np.testing.assert_array_equal(first.run({"x": _x()})["y"], want)

    second = OrtStage(path, spec, threads=1, cache_dir=cache)
    assert target.stat().st_mtime_ns == stamp  # loaded, not written again
    np.testing.assert_array_equal(second.run({"x": _x()})["y"], want)


def test_cache_key_follows_the_graph_file(conv_stage, tmp_path):
    path, spec = conv_stage
    cache = tmp_path / "bundle" / "engines"
    before = optimized_graph_path(path, spec, cache)
    assert before.parent == cache and before.name.startswith("conv-ort-cpu-")
    assert optimized_graph_path(path, spec, cache) == before
    other = StageSpec(**{**spec.__dict__, "sha256": "0" * 64})
    assert optimized_graph_path(path, other, cache) != before
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was replaced
    assert optimized_graph_path(path, spec, cache) != before


def test_unwritable_cache_folder_is_skipped(conv_stage, tmp_path):
    path, spec = conv_stage
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    stage = OrtStage(path, spec, threads=1, cache_dir=blocker / "engines")
    assert stage.run({"x": _x()})["y"].shape == (3, 8, 20, 24)
    assert blocker.is_file()


def test_damaged_cache_file_is_rebuilt(conv_stage, tmp_path):
    path, spec = conv_stage
    cache = tmp_path / "bundle" / "engines"
    target = optimized_graph_path(path, spec, cache)
    cache.mkdir(parents=True)
    target.write_bytes(b"not an onnx graph")
    want = OrtStage(path, spec, threads=1, optimized_cache=False).run({"x": _x()})["y"]
    stage = OrtStage(path, spec, threads=1, cache_dir=cache)
    np.testing.assert_array_equal(stage.run({"x": _x()})["y"], want)
    onnx.checker.check_model(onnx.load(str(target)))


def test_edited_cache_file_is_not_used_but_rebuilt(conv_stage, tmp_path):
    """A cached graph that still loads but whose bytes changed since the runtime wrote it
    (here: one weight zeroed) fails its digest and is rebuilt from the bundle's graph."""
    path, spec = conv_stage
    cache = tmp_path / "bundle" / "engines"
    want = OrtStage(path, spec, threads=1, cache_dir=cache).run({"x": _x()})["y"]
    target = optimized_graph_path(path, spec, cache)
    model = onnx.load(str(target))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    weight.raw_data = bytes(len(weight.raw_data))
    onnx.save(model, str(target))
    tampered = OrtStage(target, spec, threads=1, optimized_cache=False).run({"x": _x()})["y"]
    assert not np.array_equal(tampered, want)  # what using the edited cache would give
    stage = OrtStage(path, spec, threads=1, cache_dir=cache)
    np.testing.assert_array_equal(stage.run({"x": _x()})["y"], want)
    assert (target.parent / (target.name + ".sha256")).read_text().strip() == sha256_file(target)
    (target.parent / (target.name + ".sha256")).unlink()  # a cache without digest: rebuilt too
    stamp = target.stat().st_mtime_ns
    OrtStage(path, spec, threads=1, cache_dir=cache)
    assert target.stat().st_mtime_ns != stamp


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([("z", (3, 8, 20, 24))], r"graph conv\.onnx has inputs \['x'\], the manifest lists \['z'\]"),
        ([("x", (3, 8, 20, 25))], r"input 'x' has shape \[.*\] in conv\.onnx, the manifest says \[3, 8, 20, 25\]"),
        ([("x", (3, 8, 20))], r"input 'x' has shape"),
    ],
)  # fmt: skip
def test_manifest_that_describes_another_graph_is_one_line(conv_stage, inputs, words):
    """A stage entry whose inputs are not the graph's (names, rank, a fixed axis) is refused
    when the stage opens, not at the first frame; axis names match any size."""
    from dmm_deploy.runtime.bundle import BundleError

    path, spec = conv_stage
    wrong = StageSpec(
        **{**spec.__dict__, "inputs": tuple(TensorSpec(n, "float32", s) for n, s in inputs)}
    )
    with pytest.raises(BundleError, match=words) as e:
        OrtStage(path, wrong, threads=1, optimized_cache=False)
    assert "\n" not in str(e.value)
    named = StageSpec(
        **{**spec.__dict__, "inputs": (TensorSpec("x", "float32", ("B", 8, "h", "w")),)}
    )
    OrtStage(path, named, threads=1, optimized_cache=False)


def test_optimized_cache_must_be_a_bool(conv_stage):
    path, spec = conv_stage
    with pytest.raises(ValueError, match="optimized_cache must be True or False") as e:
        OrtStage(path, spec, optimized_cache="yes")
    assert "\n" not in str(e.value)


def test_lean_heap_is_a_validated_switch(conv_stage):
    import platform

    from dmm_deploy.runtime.backends import set_lean_heap

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert set_lean_heap() is glibc  # idempotent: the same fixed threshold again
    path, spec = conv_stage
    assert OrtStage(path, spec, lean_heap=False).run({"x": _x()})["y"].shape == (3, 8, 20, 24)
    with pytest.raises(ValueError, match="lean_heap must be True or False"):
        OrtStage(path, spec, lean_heap=1)


def test_shared_arena_sessions_and_release(conv_stage):
    """Stage sessions share the one process-wide CPU arena (registered once, however many
    sessions); release_arena gives its free memory back after each run; outputs are the same
    whichever way the memory comes."""
    from dmm_deploy.runtime.backends import register_shared_cpu_arena

    path, spec = conv_stage
    register_shared_cpu_arena()
    register_shared_cpu_arena()  # once per process: no error the second time
    own = OrtStage(path, spec, threads=1, optimized_cache=False, shared_arena=False)
    shared = OrtStage(path, spec, threads=1, optimized_cache=False)
    shared2 = OrtStage(path, spec, threads=1, optimized_cache=False)
    release = OrtStage(path, spec, threads=1, optimized_cache=False, release_arena=True)
    opts = [r.session.get_session_options() for r in (own, shared, shared2, release)]
    key = "session.use_env_allocators"
    assert [o.get_session_config_entry(key) for o in opts[1:]] == ["1"] * 3
    assert not opts[0].enable_cpu_mem_arena and opts[1].enable_cpu_mem_arena
    assert own.run_options is None and shared.run_options is None
    assert release.run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == (
        "cpu:0"
    )
    want = own.run({"x": _x()})["y"]
    for r in (shared, shared2, release, release):
        np.testing.assert_array_equal(r.run({"x": _x()})["y"], want)
    with pytest.raises(ValueError, match="shared_arena must be True or False"):
        OrtStage(path, spec, shared_arena="yes")


def test_split_detector_axes_get_tensorrt_profiles():
    """A split Mask R-CNN bundle's image and FPN feature axes get profile ranges from the
    manifest's transform sizes (multiples of size_divisible; features at strides 4..32)."""
    from dmm_deploy.runtime.backends import AXIS_RANGES, _profile_shapes, axis_ranges

    assert axis_ranges({"kind": "precomputed"}) == AXIS_RANGES
    r = axis_ranges(SPLIT)
    assert r["Hp"] == (32, 480, 800) and r["Wp"] == (32, 800, 800)
    assert r["h0"] == (8, 120, 200) and r["w3"] == (1, 25, 25)
    small = axis_ranges({**SPLIT, "min_size": 160, "max_size": 267})
    assert small["Hp"] == (32, 160, 288) and small["Wp"] == (32, 288, 288)
    det = _spec("detector", [("image", (1, 3, "Hp", "Wp"))])
    shapes = [_profile_shapes(det, i, ranges=r)["image"] for i in range(3)]
    assert shapes == [(1, 3, 32, 32), (1, 3, 480, 800), (1, 3, 800, 800)]


def test_tensorrt_stage_engines_come_from_the_projects_builder(tmp_path, monkeypatch):
    """backend='tensorrt' builds each stage with the project's builder (the one behind
    trt-build): strongly typed on 10.x, one profile from the manifest's axes, static inputs at
    their shape, a shared timing cache, engines cached per graph, TensorRT version and GPU.
    TensorRT itself is a stand-in here (its library cannot be installed)."""
    from test_tensorrt_engine import _fake_trt

    from dmm_deploy.runtime.backends import axis_ranges, build_stage_engine
    from dmm_deploy.runtime.trt_build import TensorRTBuildError

    fake = _fake_trt("10.3.0")

    class In:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Net:
        num_inputs = 2

        def get_input(self, i):
            return [In("image", (1, 3, -1, -1)), In("size", (2,))][i]

    def with_inputs(trt):
        def network(self, flags):
            trt.calls.append(("network_flags", flags))
            return Net()

        monkeypatch.setattr(trt.Builder, "create_network", network)
        return trt

    fake = with_inputs(fake)
    spec = _spec("detector", [("image", (1, 3, "Hp", "Wp")), ("size", (2,))], sha256="1" * 64)
    ranges = axis_ranges(SPLIT)
    path = tmp_path / "detector.onnx"
    path.write_bytes(b"not really onnx")
    cache = tmp_path / "engines"
    engine = build_stage_engine(fake, path, spec, cache, ranges, "Fake GPU")
    assert engine.parent == cache and engine.read_bytes() == b"PLAN"
    assert ("network_flags", 2) in fake.calls  # STRONGLY_TYPED on 10.x
    assert ("profile", "image", (1, 3, 32, 32), (1, 3, 480, 800), (1, 3, 800, 800)) in fake.calls
    assert ("profile", "size", (2,), (2,), (2,)) in fake.calls
    assert ("clear_flag", "TF32") in fake.calls  # an fp32 stage stays float32 on the GPU
    assert fake.calls.index(("plugins", "")) < fake.calls.index(("parse", str(path)))
    assert (cache / "timing.cache").read_bytes() == b"+timed"
    assert [p.name for p in cache.iterdir() if p.suffix == ".tmp"] == []
    fake.calls.clear()  # cached: nothing parsed or built
    assert build_stage_engine(fake, path, spec, cache, ranges, "Fake GPU") == engine
    assert fake.calls == []
    engine.write_bytes(b"PLAn")  # an engine changed since it was built: built again
    assert build_stage_engine(fake, path, spec, cache, ranges, "Fake GPU") == engine
    assert ("parse", str(path)) in fake.calls and engine.read_bytes() == b"PLAN"
    fake.calls.clear()
    assert build_stage_engine(fake, path, spec, cache, ranges, "Other GPU") != engine
    fake11 = with_inputs(_fake_trt("11.0.0"))  # TensorRT 11: always strongly typed, flags 0
    build_stage_engine(fake11, path, spec, tmp_path / "e11", ranges, "Fake GPU")
    assert ("network_flags", 0) in fake11.calls
    fake.fail_parse = True
    before = sorted(cache.iterdir())
    with pytest.raises(TensorRTBuildError, match=r"rejected .*detector\.onnx"):
        build_stage_engine(fake, path, spec, cache, ranges, "Third GPU")
    assert sorted(cache.iterdir()) == before  # nothing written for a refused graph
