"""The torch-free runtime: import hygiene, numpy image ops against torch, bundle errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from dmm_deploy.runtime import Bundle, BundleError, Runtime  # noqa: E402
from dmm_deploy.runtime.backends import ort_providers  # noqa: E402
from dmm_deploy.runtime.bundle import sha256_file  # noqa: E402
from dmm_deploy.runtime.imaging import (  # noqa: E402
    frame_to_input,
    merge_probabilities,
    nms,
    paste_box_masks,
    resize,
    tight_boxes,
)


def test_runtime_imports_no_torch(repo_root):
    code = (
        "import sys, dmm_deploy.runtime, dmm_deploy.runtime.jobs\n"
        "bad = [m for m in ('torch', 'torchvision', 'dmm_deploy.model', 'dmm_deploy.matching',"
        " 'kernels', 'triton') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)


# -- numpy image operations against the model's torch helpers --------------------------------


@pytest.fixture(scope="module")
def torch_ops():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from torchvision.ops import nms as tv_nms

    from dmm_deploy.model.embed import tight_boxes as t_tight
    from dmm_deploy.model.net import frame_to_input as t_input
    from dmm_deploy.model.net import merge_probabilities as t_merge
    from dmm_deploy.model.net import resize_masks
    from dmm_deploy.model.proposals import paste_box_masks as t_paste

    return dict(
        torch=torch,
        F=F,
        nms=tv_nms,
        tight=t_tight,
        input=t_input,
        merge=t_merge,
        resize_masks=resize_masks,
        paste=t_paste,
    )


@pytest.mark.parametrize("size", [(255, 448), (37, 61), (600, 900), (480, 300)])
def test_frame_to_input_matches_torch_antialiased_resize(torch_ops, size):
    img = np.random.default_rng(0).integers(0, 256, (97, 171, 3), dtype=np.uint8)
    want = torch_ops["input"](img, size)[0].numpy()
    got = frame_to_input(img, size)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("size", [(480, 854), (13, 29), (64, 96)])
def test_bilinear_and_nearest_resize_match_torch(torch_ops, size):
    torch, F = torch_ops["torch"], torch_ops["F"]
    p = np.random.default_rng(1).random((3, 64, 96)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(p)[:, None], size=size, mode="bilinear")[:, 0]
    np.testing.assert_allclose(resize(p, size), want.numpy(), atol=1e-5)
    m = np.random.default_rng(2).random((2, 41, 77)) > 0.5
    want = torch_ops["resize_masks"](torch.from_numpy(m), size).numpy()
    np.testing.assert_array_equal(resize(m.astype(np.float32), size, "nearest-exact"), want)


def test_boxes_nms_paste_merge_match_torch(torch_ops):
    torch = torch_ops["torch"]
    g = np.random.default_rng(3)
    masks = (g.random((4, 30, 50)) * np.array([1, 1, 1, 0])[:, None, None]).astype(np.float32)
    got_b, got_n = tight_boxes(masks, 0.4)
    want_b, want_n = torch_ops["tight"](torch.from_numpy(masks), 0.4)
    np.testing.assert_array_equal(got_b, want_b.numpy())
    np.testing.assert_array_equal(got_n, want_n.numpy())
    boxes = g.random((80, 4)).astype(np.float32) * 100
    boxes[:, 2:] += boxes[:, :2]
    scores = g.random(80).astype(np.float32)
    want = torch_ops["nms"](torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, 0.4), want)
    m28 = g.random((5, 28, 28)).astype(np.float32)
    bx = np.array(
        [
            [10, 20, 100, 200],
            [0, 0, 5, 5],
            [-10, -5, 60, 40],
            [400, 200, 447, 254],
            [30.5, 40, 31, 42],
        ],
        np.float32,
    )
    want = torch_ops["paste"](torch.from_numpy(m28), torch.from_numpy(bx), (255, 448)).numpy()
    np.testing.assert_allclose(paste_box_masks(m28, bx, (255, 448)), want, atol=2e-6)
    probs = g.random((3, 20, 30)).astype(np.float32)
    ids = np.array([7, 2, 200], np.uint8)
    want = torch_ops["merge"](torch.from_numpy(probs), torch.from_numpy(ids)).numpy()
    np.testing.assert_array_equal(merge_probabilities(probs, ids), want)


# -- bundle errors: a tiny hand-made bundle (identity graphs), no torch ----------------------


def _tiny_bundle(root, precision="fp32"):
    """A bundle of identity graphs under the stage names and tensor names the runtime uses
    (every output a copy of the first input; the match graph has the outputs of both
    matching modes)."""
    from dmm_deploy.runtime.bundle import MATCH_EXACT_OUTPUTS, RUNTIME_IO

    root.mkdir(parents=True, exist_ok=True)
    stages = {}
    for name in ("encoder", "embed", "match"):
        ins, outs = RUNTIME_IO[name]
        outs = (*outs, *MATCH_EXACT_OUTPUTS) if name == "match" else outs
        x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", 3]) for n in ins]
        y = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", 3]) for n in outs]
        nodes = [helper.make_node("Identity", [ins[0]], [n]) for n in outs]
        graph = helper.make_graph(nodes, name, x, y)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(root / f"{name}.onnx"))
        stages[name] = {
            "file": f"{name}.onnx",
            "sha256": sha256_file(root / f"{name}.onnx"),
            "precision": precision,
            "opset": 17,
            "inputs": [{"name": n, "dtype": "float32", "shape": ["B", 3]} for n in ins],
            "outputs": [{"name": n, "dtype": "float32", "shape": ["B", 3]} for n in outs],
        }
    manifest = {
        "format": "dmm-deploy-bundle",
        "version": 1,
        "config": {"refine": False, "hidden_size": 8},
        "input_size": [32, 32],
        "precision": precision,
        "proposals": {"kind": "precomputed"},
        "stages": stages,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_a_valid_bundle_opens(tmp_path):
    rt = Runtime.open(_tiny_bundle(tmp_path / "b"))
    out = rt.run("encoder", {"image": np.ones((2, 3))})
    np.testing.assert_array_equal(out["match4"], np.ones((2, 3), np.float32))
    # no Mask R-CNN stage: no stage releases the shared arena (see open_stage)
    assert all(r.run_options is None for r in rt.runners.values())


def test_missing_and_modified_files_are_named(tmp_path):
    root = _tiny_bundle(tmp_path / "b")
    (root / "embed.onnx").write_bytes((root / "embed.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert "embed" in _one_line(e) and "modified" in str(e.value)
    (root / "embed.onnx").unlink()
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert "embed.onnx" in _one_line(e) and "missing" in str(e.value)
    (root / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        Bundle.load(root)
    with pytest.raises(BundleError, match="not a folder"):
        Bundle.load(tmp_path / "nowhere")


def test_unknown_manifest_version_and_precision(tmp_path):
    root = _tiny_bundle(tmp_path / "b")
    data = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert "version 99" in _one_line(e)
    (root / "manifest.json").write_text(json.dumps({**data, "precision": "int4"}))
    with pytest.raises(BundleError, match="unknown precision 'int4'"):
        Bundle.load(root)


def test_fp16_bundle_is_refused_on_the_cpu_provider(tmp_path):
    root = _tiny_bundle(tmp_path / "b", precision="fp16")
    with pytest.raises(BundleError) as e:
        Runtime.open(root)
    assert "fp16" in _one_line(e)
    Runtime.open(root, allow_fp16_on_cpu=True)  # explicit opt-in for measurements


def test_cuda_without_a_gpu_provider_is_an_error_not_a_fallback(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(RuntimeError) as e:
        Runtime.open(_tiny_bundle(tmp_path / "b"), device="cuda")
    assert "CUDAExecutionProvider" in _one_line(e)
    with pytest.raises(RuntimeError, match="TensorrtExecutionProvider"):
        ort_providers("cuda", trt_ep=True)
    with pytest.raises(ValueError, match="device"):
        Runtime.open(_tiny_bundle(tmp_path / "c"), device="tpu")


def test_tensorrt_backend_needs_cuda_and_tensorrt(tmp_path):
    root = _tiny_bundle(tmp_path / "b")
    with pytest.raises(ValueError, match="device='cuda'"):
        Runtime.open(root, backend="tensorrt", device="cpu")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="TensorRT"):
            Runtime.open(root, backend="tensorrt", device="cuda")
    else:
        pytest.skip("TensorRT is installed: the engine path is exercised on a GPU machine")


def test_unknown_model_settings_are_refused(tmp_path):
    root = _tiny_bundle(tmp_path / "b")
    data = json.loads((root / "manifest.json").read_text())
    data["config"].update(compat="original", merge_at="input", matching="exact")
    (root / "manifest.json").write_text(json.dumps(data))
    rt = Runtime.open(root)  # the original's pipeline and exact matching are implemented
    assert rt.cfg["merge_at"] == "input" and rt.cfg["no_detections"] == "pad"  # absent: default
    data["config"].update(compat="future", matching="auction")
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert "compat='future'" in _one_line(e) and "matching='auction'" in str(e.value)


def test_build_segmenter_checks_its_options(tmp_path):
    from types import SimpleNamespace

    from dmm_deploy.runtime.jobs import build_segmenter

    root = _tiny_bundle(tmp_path / "b")
    opts = SimpleNamespace(
        bundle=root, backend="onnxruntime", device="cpu", proposals="precomputed", threads=1
    )
    with pytest.raises(ValueError, match="--precomputed"):
        build_segmenter(SimpleNamespace(**vars(opts), precomputed=None))
    with pytest.raises(FileNotFoundError, match="--precomputed"):
        build_segmenter(SimpleNamespace(**vars(opts), precomputed=tmp_path / "none.npz"))
    with pytest.raises(ValueError, match=r"no proposals stage .*--proposals precomputed:FILE\.npz"):
        build_segmenter(
            SimpleNamespace(**{**vars(opts), "proposals": "maskrcnn"}, precomputed=None)
        )
