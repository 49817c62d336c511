"""Import of the original DMM-Net checkpoints, on state dicts synthesised with the original's
parameter names and shapes (written out here from its FeatureExtractor and RSISMask)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from dmm_deploy.model import (
    DMMConfig,
    DMMNet,
    convert_original_state_dict,
    load_original_checkpoint,
    original_key_map,
    read_original_checkpoint,
)


def _bn(prefix: str, c: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        prefix + "weight": torch.rand(c, generator=gen) + 0.5,
        prefix + "bias": torch.randn(c, generator=gen),
        prefix + "running_mean": torch.randn(c, generator=gen),
        prefix + "running_var": torch.rand(c, generator=gen) + 0.5,
        prefix + "num_batches_tracked": torch.tensor(7),
    }


def _conv(prefix: str, c_out: int, c_in: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        prefix + "weight": torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.01,
        prefix + "bias": torch.randn(c_out, generator=gen),
    }


def original_trainer_state(backbone: str, hidden: int = 128, seed: int = 0) -> dict:
    """A ``Trainer.state_dict()`` of the original (DataParallel ``module.`` prefix), random."""
    gen = torch.Generator().manual_seed(seed)
    enc: dict[str, torch.Tensor] = {}
    # the original's ResNet101/ResNet50 subclass torchvision's ResNet: same names, fc included
    base = getattr(torchvision.models, backbone)(weights=None).state_dict()
    for k, v in base.items():
        enc["base." + k] = torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
    dims = {5: 2048, 4: 1024, 3: 512, 2: 256}  # get_skip_dims('resnet101' / 'resnet50')
    width = {5: hidden, 4: hidden, 3: hidden // 2, 2: hidden // 4}
    for i in (5, 4, 3, 2):
        enc |= _conv(f"sk{i}.", width[i], dims[i], gen)
        enc |= _bn(f"bn{i}.", width[i], gen)
        enc |= _conv(f"prop{i}.0.", width[i], dims[i], gen)
        enc |= _bn(f"prop{i}.1.", width[i], gen)
        enc |= _conv(f"prop{i}.3.", hidden, width[i], gen)
        enc |= _bn(f"prop{i}.4.", hidden, gen)
    dec: dict[str, torch.Tensor] = {}
    hid = [hidden, hidden // 2, hidden // 4, hidden // 8]
    c_in = [hidden, 2 * hid[0], 2 * hid[1], 2 * hid[2]]  # skip_mode 'concat'
    for k in range(4):
        dec |= _conv(f"clstm_list.{k}.Gates.", 4 * hid[k], c_in[k] + 1 + 2 * hid[k], gen)
    dec |= _conv("conv_out.", 1, hid[3], gen)
    out = {"module.encoder." + k: v for k, v in enc.items()}
    out |= {"module.decoder." + k: v for k, v in dec.items()}
    return out


@pytest.fixture(scope="module")
def r101():
    torch.manual_seed(0)
    return DMMNet(DMMConfig(backbone="resnet101"))


@pytest.fixture(scope="module")
def r101_state():
    return original_trainer_state("resnet101")


@pytest.mark.filterwarnings("ignore:original DMM-Net weights loaded")  # expected: compat default
def test_import_maps_every_original_parameter(r101, r101_state):
    load_original_checkpoint(r101, r101_state)
    ours = r101.state_dict()
    pairs = {
        "encoder.backbone.layer3.22.conv2.weight": "module.encoder.base.layer3.22.conv2.weight",
        "encoder.backbone.bn1.running_var": "module.encoder.base.bn1.running_var",
        "encoder.skip_heads.0.conv.weight": "module.encoder.sk2.weight",
        "encoder.skip_heads.3.bn.running_mean": "module.encoder.bn5.running_mean",
        "encoder.match_heads.0.conv1.weight": "module.encoder.prop2.0.weight",
        "encoder.match_heads.1.bn1.bias": "module.encoder.prop3.1.bias",
        "encoder.match_heads.2.conv2.bias": "module.encoder.prop4.3.bias",
        "encoder.match_heads.3.bn2.running_var": "module.encoder.prop5.4.running_var",
        "decoder.cells.0.gates.weight": "module.decoder.clstm_list.0.Gates.weight",
        "decoder.cells.3.gates.bias": "module.decoder.clstm_list.3.Gates.bias",
        "decoder.conv_out.weight": "module.decoder.conv_out.weight",
    }
    for mine, orig in pairs.items():
        assert torch.equal(ours[mine], r101_state[orig]), mine
    # every parameter and buffer came from the checkpoint (the table is one-to-one)
    table = original_key_map(list(ours))
    assert len(table) == len(ours) == len(set(table.values()))
    used = {k.replace("module.", "") for k in r101_state} - {
        "encoder.base.fc.weight",
        "encoder.base.fc.bias",
    }
    assert used == set(table)
    for orig, mine in table.items():
        assert torch.equal(ours[mine], r101_state["module." + orig]), orig


def test_import_is_strict(r101, r101_state):
    cfg = r101.cfg
    extra = dict(r101_state)
    extra["module.encoder.sk6.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unmapped original keys: module\.encoder\.sk6\.weight"):
        convert_original_state_dict(extra, cfg, reference=r101)

    missing = {k: v for k, v in r101_state.items() if "clstm_list.2" not in k}
    with pytest.raises(ValueError, match=r"without a value: decoder\.cells\.2\.gates"):
        convert_original_state_dict(missing, cfg, reference=r101)

    wrong = dict(r101_state)
    wrong["module.encoder.prop3.3.weight"] = torch.zeros(128, 64, 1, 1)
    with pytest.raises(ValueError, match=r"shape mismatches: module\.encoder\.prop3\.3\.weight"):
        convert_original_state_dict(wrong, cfg, reference=r101)

    # checkpoints from before num_batches_tracked existed still load
    old = {k: v for k, v in r101_state.items() if not k.endswith("num_batches_tracked")}
    assert len(convert_original_state_dict(old, cfg, reference=r101)) == len(r101.state_dict())


def test_import_rejects_a_different_architecture(r101_state):
    small = DMMNet(DMMConfig(backbone="resnet18", hidden_size=32))
    with pytest.raises(ValueError, match="does not fit DMMNet") as err:
        load_original_checkpoint(small, r101_state)
    assert "shape mismatches" in str(err.value) and "unmapped" in str(err.value)


def test_import_resnet50_without_module_prefix():
    state = {k.replace("module.", ""): v for k, v in original_trainer_state("resnet50").items()}
    model = load_original_checkpoint(DMMNet(DMMConfig(backbone="resnet50")), state)
    torch.testing.assert_close(
        model.encoder.backbone.layer4[2].conv3.weight, state["encoder.base.layer4.2.conv3.weight"]
    )


def test_read_checkpoint_directories(tmp_path, r101, r101_state):
    one = tmp_path / "epo01"
    one.mkdir()
    torch.save(r101_state, one / "trainer.pt")
    assert read_original_checkpoint(one).keys() == r101_state.keys()
    assert read_original_checkpoint(one / "trainer.pt").keys() == r101_state.keys()

    two = tmp_path / "old"
    two.mkdir()
    enc = {k[len("module.encoder.") :]: v for k, v in r101_state.items() if ".encoder." in k}
    dec = {
        "module." + k[len("module.decoder.") :]: v
        for k, v in r101_state.items()
        if ".decoder." in k
    }
    torch.save(enc, two / "encoder.pt")
    torch.save(dec, two / "decoder.pt")
    load_original_checkpoint(r101, two)
    torch.testing.assert_close(
        r101.decoder.conv_out.weight, r101_state["module.decoder.conv_out.weight"]
    )

    with pytest.raises(FileNotFoundError, match=r"no trainer\.pt"):
        read_original_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_original_checkpoint(tmp_path / "absent")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.pt"):
        read_original_checkpoint(bad)


def test_unreadable_checkpoint_files_are_one_short_reason(tmp_path):
    """Garbage and pickled objects get one line saying what the file is not, instead of
    torch's paragraph about loading with weights_only=False (never done here)."""
    from dmm_deploy.model.checkpoint import read_original_checkpoint

    garbage = tmp_path / "trainer.pt"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=r"trainer\.pt: not a PyTorch weights file") as e:
        read_original_checkpoint(garbage)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    pickled = tmp_path / "objects.pt"
    torch.save({"encoder": object()}, pickled)
    with pytest.raises(ValueError, match=r"objects\.pt: it holds Python objects besides tensors"):
        read_original_checkpoint(pickled)
