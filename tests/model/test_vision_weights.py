"""open_clip weight files in every layout open_clip itself accepts, plus bare vision towers and our own file."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from flamingo.model.config import VisionConfig
from flamingo.model.tiny import TINY_OPEN_CLIP
from flamingo.model.vision import OpenClipAdapter, _register_open_clip_config

NAME = "flamingo-tiny-vit"


@pytest.fixture(scope="module")
def source():
    """A tiny open_clip model with non-default weights, and its vision features on fixed pixels."""
    import open_clip

    _register_open_clip_config(NAME, TINY_OPEN_CLIP)
    torch.manual_seed(7)
    model = open_clip.create_model(NAME, pretrained=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, pixels


def adapter_from(path, **changes) -> OpenClipAdapter:
    config = VisionConfig(
        kind="open_clip", name=NAME, pretrained=str(path), model_cfg=TINY_OPEN_CLIP, **changes
    )
    return OpenClipAdapter.from_config(config).eval()


def features(adapter, pixels):
    with torch.no_grad():
        return adapter(pixels)


def layouts(model):
    whole = {k: v.contiguous() for k, v in model.state_dict().items()}
    visual = {k: v.contiguous() for k, v in model.visual.state_dict().items()}
    return {
        "whole.bin": whole,  # open_clip_pytorch_model.bin on the hub
        "whole.safetensors": whole,  # open_clip_model.safetensors
        "training.pt": {
            "epoch": 3,
            "name": "run",
            "state_dict": {f"module.{k}": v for k, v in whole.items()},
        },
        "visual.pt": visual,  # model.visual.state_dict()
        "visual.safetensors": visual,
        "ours.safetensors": {f"visual.{k}": v for k, v in visual.items()},  # OpenClipAdapter.save_backbone
    }


def test_every_layout_loads_with_identical_features(tmp_path, source):
    model, pixels = source
    reference = OpenClipAdapter(
        model.visual, VisionConfig(kind="open_clip", name=NAME, model_cfg=TINY_OPEN_CLIP)
    )
    expected = features(reference, pixels)
    for name, state in layouts(model).items():
        path = tmp_path / name
        if name.endswith(".safetensors"):
            save_file(state, str(path))
        else:
            torch.save(state, path)
        got = features(adapter_from(path), pixels)
        assert torch.equal(got, expected), name


def test_random_initialisation_differs(source):
    """The comparison above means something: an adapter that skipped the file would not match."""
    import open_clip

    model, pixels = source
    fresh = open_clip.create_model(NAME, pretrained=None)
    config = VisionConfig(kind="open_clip", name=NAME, model_cfg=TINY_OPEN_CLIP)
    assert not torch.allclose(
        features(OpenClipAdapter(fresh.visual, config), pixels),
        features(OpenClipAdapter(model.visual, config), pixels),
    )


def test_a_hugging_face_clip_file_is_named_as_such(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(64, 3, 8, 8)}, str(path))
    with pytest.raises(
        ValueError, match=r"look like a Hugging Face CLIP/SigLIP checkpoint.*Expected an open_clip"
    ):
        adapter_from(path)


def test_a_tower_of_another_architecture_says_what_did_not_fit(tmp_path, source):
    model, _ = source
    visual = {k: v for k, v in model.visual.state_dict().items() if k != "proj"}
    visual["conv1.weight"] = torch.zeros(64, 3, 4, 4)
    path = tmp_path / "other.pt"
    torch.save(visual, path)
    with pytest.raises(
        ValueError, match=r"look like a bare vision tower state dict but do not fit .*conv1\.weight"
    ):
        adapter_from(path)


def test_a_whole_model_of_another_architecture_is_refused(tmp_path, source):
    model, _ = source
    whole = dict(model.state_dict())
    whole["visual.conv1.weight"] = torch.zeros(64, 3, 4, 4)
    path = tmp_path / "whole.pt"
    torch.save(whole, path)
    with pytest.raises(ValueError, match=r"look like an open_clip model state dict but do not fit"):
        adapter_from(path)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps({"visual.conv1.weight": _Payload()}))
    with pytest.raises(ValueError, match="refused to load, it is not a plain tensor file"):
        adapter_from(path)
    assert "pickled code ran" not in capsys.readouterr().out
