"""pytl.models: the MLP and CNN encoders, the head, Standardize and the head swap of any backbone."""

import numpy as np
import pytest
import torch
from torch import nn

from pytl.models import (ClassifierHead, ConvEncoder, MLPEncoder, Standardize, TransferModel, default_cnn,
                         default_model, default_width)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_mlp_encoder_structure_and_shapes():
    enc = MLPEncoder(5, (16, 8), activation="tanh", dropout=0.25, batch_norm=True)
    assert enc.out_features == 8 and len(enc.blocks) == 2
    kinds = [type(m) for m in enc.blocks[0]]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.Tanh, nn.Dropout]
    assert enc.blocks[0][0].bias is None  # BatchNorm makes the bias redundant
    assert enc.blocks[0][3].p == 0.25
    assert enc(torch.randn(7, 5)).shape == (7, 8)
    # images are flattened: (N, 1, 2, 3) has 6 features
    assert MLPEncoder(6, (4,))(torch.randn(3, 1, 2, 3)).shape == (3, 4)
    plain = MLPEncoder(5, (16,))
    assert [type(m) for m in plain.blocks[0]] == [nn.Linear, nn.ReLU]


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(in_features=0), ValueError, "in_features"),
    (dict(in_features=3, hidden_sizes=()), ValueError, "hidden_sizes"),
    (dict(in_features=3, hidden_sizes=(4, -1)), ValueError, "hidden_sizes"),
    (dict(in_features=3, hidden_sizes=4), TypeError, "hidden_sizes"),
    (dict(in_features=3, activation="swish!"), ValueError, "activation"),
    (dict(in_features=3, dropout=1.0), ValueError, "dropout"),
    (dict(in_features=3, batch_norm="yes"), TypeError, "batch_norm"),
    (dict(in_features=3.0), TypeError, "in_features must be an int"),
    (dict(in_features=3, hidden_sizes=(4, 2.5)), TypeError, r"hidden_sizes\[1\] must be an int"),
    (dict(in_features=3, hidden_sizes=(4, True)), TypeError, r"hidden_sizes\[1\] must be an int"),
    (dict(in_features=3, dropout="0.1"), TypeError, "dropout must be a finite number"),
    (dict(in_features=3, dropout=float("nan")), ValueError, "dropout must be a finite number"),
    (dict(in_features=3, activation=3), TypeError, "activation"),
])
def test_mlp_encoder_rejects_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        MLPEncoder(**kwargs)


def test_sizes_may_be_numpy_ints_and_activation_names_any_case():
    enc = MLPEncoder(np.int64(3), (np.int64(4),), activation="GELU")
    assert enc.out_features == 4 and type(enc.out_features) is int
    assert isinstance(enc.blocks[0][1], nn.GELU)
    with pytest.raises(ValueError, match="activation must be one of .*'gelu'.* or a callable"):
        MLPEncoder(3, activation="swish")


def test_standardize_matches_hand_computation():
    a = torch.tensor([[1.0, 10.0], [3.0, 10.0]])
    b = torch.tensor([[5.0, 10.0]])
    st = Standardize.fit(a, b)
    # pooled column 0: 1, 3, 5 -> mean 3, population std sqrt(8/3); column 1 is constant -> std 1
    assert torch.allclose(st.mean, torch.tensor([3.0, 10.0]))
    assert torch.allclose(st.std, torch.tensor([(8 / 3) ** 0.5, 1.0]))
    out = st(torch.tensor([[3.0 + (8 / 3) ** 0.5, 12.0]]))
    assert torch.allclose(out, torch.tensor([[1.0, 2.0]]))
    assert [n for n, _ in st.named_parameters()] == []  # statistics are buffers: never trained, never frozen
    with pytest.raises(ValueError, match="finite"):
        Standardize(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_classifier_head_and_transfer_model():
    enc = MLPEncoder(4, (8,))
    head = ClassifierHead(8, 3, hidden_sizes=(5,))
    model = TransferModel(enc, head)
    x = torch.randn(6, 4)
    z = model.embed(x)
    assert z.shape == (6, 8)
    assert torch.equal(model(x), head(z))
    assert model.num_classes == 3
    with pytest.raises(TypeError, match="encoder"):
        TransferModel("not a module", head)


def test_default_model_is_256_wide_whatever_the_input():
    # one width for every input size (OUTCOMES.md, eighth session: narrower layers for small inputs lost points)
    assert default_width(2) == default_width(64) == default_width(10_000) == 256
    with pytest.raises(ValueError, match="in_features"):
        default_width(0)
    m = default_model(100, 4)
    assert [b[0].out_features for b in m.encoder.blocks] == [256, 256]
    assert m(torch.randn(2, 100)).shape == (2, 4)
    st = Standardize.fit(torch.randn(10, 3) * 5 + 7)
    m = default_model(3, 2, hidden_sizes=(4,), standardize=st)
    assert m.encoder.standardize is st
    with pytest.raises(ValueError, match="features"):
        default_model(5, 2, standardize=st)


# ----------------------------------------------------------------------------- CNN encoder


def test_conv_encoder_structure_and_shapes():
    enc = ConvEncoder(in_channels=3, image_size=28, channels=(8, 16), embedding=32, dropout=0.1)
    assert enc.out_features == 32 and len(enc.blocks) == 3  # two conv blocks, then the dense block
    assert [type(m) for m in enc.blocks[0]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert enc.blocks[0][0].bias is None and enc.blocks[0][0].kernel_size == (5, 5)
    assert [type(m) for m in enc.blocks[2]] == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert enc.blocks[2][1].in_features == 16 * 7 * 7  # 28 -> 14 -> 7
    assert enc(torch.randn(4, 3, 28, 28)).shape == (4, 32)
    plain = ConvEncoder(1, image_size=9, channels=(4,), embedding=5, kernel_size=3, batch_norm=False)
    assert [type(m) for m in plain.blocks[0]] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    assert plain.blocks[1][1].in_features == 4 * 4 * 4  # odd sizes are floored by the pooling
    assert plain(torch.randn(2, 1, 9, 9)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 1, 9, 9\), got \(2, 81\)"):
        plain(torch.randn(2, 81))


def test_default_cnn_embed_head_and_freezing_blocks():
    from pytl.freezing import blocks

    m = default_cnn(10, in_channels=3, channels=(4, 8), embedding=16, seed=0)
    x = torch.randn(5, 3, 28, 28)
    m.eval()
    z = m.embed(x)
    assert z.shape == (5, 16) and m(x).shape == (5, 10)
    assert torch.equal(m(x), m.head(z))
    assert m.num_classes == 10
    assert [b.name for b in blocks(m)] == ["encoder.blocks.0", "encoder.blocks.1", "encoder.blocks.2", "head"]


def test_default_cnn_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = default_cnn(3, channels=(4,), embedding=8, seed=7), default_cnn(3, channels=(4,), embedding=8, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    c = default_cnn(3, channels=(4,), embedding=8, seed=8)
    assert not torch.equal(a.encoder.blocks[0][0].weight, c.encoder.blocks[0][0].weight)


def test_conv_encoder_standardizes_per_channel_or_per_pixel():
    x = torch.rand(6, 3, 8, 8) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1, 1) + 5
    y = torch.rand(4, 3, 8, 8)
    st = Standardize.fit_channels(x, y)
    pooled = torch.cat([x, y]).double()
    assert st.mean.shape == (3,)
    assert torch.allclose(st.mean.double(), pooled.mean((0, 2, 3)))
    assert torch.allclose(st.std.double(), pooled.std((0, 2, 3), unbiased=False), rtol=1e-5)
    enc = ConvEncoder(3, image_size=8, channels=(2,), embedding=4, batch_norm=False, standardize=st)
    seen = []
    enc.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    enc(torch.cat([x, y]))
    assert torch.allclose(seen[0].mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(seen[0].std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    per_pixel = ConvEncoder(3, image_size=8, channels=(2,), embedding=4, standardize=Standardize.fit(x))
    assert per_pixel(x).shape == (6, 4)
    with pytest.raises(ValueError, match="fit_channels takes image tensors"):
        Standardize.fit_channels(torch.randn(3, 4))


def test_cnn_trains_on_a_tiny_problem():
    """Class 0 has a bright top half, class 1 a bright bottom half: the loss falls and the fit is perfect."""
    from pytl.train import TwoStageTrainer

    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.rand(64, 1, 8, 8, generator=g) * 0.5
    x[y == 0, :, :4] += 1.0
    x[y == 1, :, 4:] += 1.0
    model = default_cnn(2, image_size=8, channels=(4,), embedding=8, seed=0)
    tr = TwoStageTrainer(model, finetune_epochs=8, batch_size=16, lr=1e-2, seed=0, progress=False)
    tr.finetune((x, y))
    losses = [r["loss"] for r in tr.history["finetune"]]
    assert losses[-1] < 0.5 * losses[0]
    assert tr.score(x, y) == 1.0


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(in_channels=0), ValueError, "in_channels must be an int >= 1"),
    (dict(in_channels=1.0), TypeError, "in_channels must be an int"),
    (dict(image_size=3), ValueError, "image_size must be an int >= 4"),  # two poolings need 4 pixels
    (dict(image_size="28"), TypeError, "image_size"),
    (dict(channels=()), ValueError, "channels"),
    (dict(channels=16), TypeError, "channels"),
    (dict(channels=(8, 0)), ValueError, r"channels\[1\]"),
    (dict(embedding=0), ValueError, "embedding"),
    (dict(kernel_size=4), ValueError, "kernel_size must be an odd int"),
    (dict(kernel_size=3.0), TypeError, "kernel_size"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(batch_norm=1), TypeError, "batch_norm must be True or False"),
    (dict(standardize="yes"), TypeError, "standardize must be a Standardize"),
    (dict(in_channels=3, standardize=Standardize(torch.zeros(2), torch.ones(2))), ValueError,
     "expected 3 \\(per channel\\) or 2352 \\(per pixel\\)"),
])
def test_conv_encoder_rejects_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        ConvEncoder(**kwargs)


def test_default_cnn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        default_cnn(0)
    with pytest.raises(TypeError, match="seed must be an int"):
        default_cnn(10, seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        default_cnn(10, seed=-1)
    with pytest.raises(ValueError, match="in_channels"):
        default_cnn(10, in_channels=0, seed=0)


# ----------------------------------------------------------------------------- head swap


class TinyResNet(nn.Module):
    """torchvision-ResNet-shaped: stem, a stage, global pooling, flatten, `fc` (registered last)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyVGG(nn.Module):
    """torchvision-VGG-shaped: `features`, then a `classifier` Sequential ending in a Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_from_backbone_resnet_like_replaces_fc_and_keeps_features():
    torch.manual_seed(0)
    backbone = TinyResNet().eval()
    model = TransferModel.from_backbone(backbone, num_classes=3).eval()
    x = torch.randn(5, 3, 6, 6)
    assert isinstance(model.encoder.fc, nn.Identity)
    assert isinstance(model.head, nn.Linear) and (model.head.in_features, model.head.out_features) == (12, 3)
    assert model(x).shape == (5, 3)
    # the embedding is exactly what fed the old fc
    fed = {}
    backbone.fc.register_forward_hook(lambda m, i, o: fed.setdefault("z", i[0]))
    backbone(x)
    assert torch.equal(model.embed(x), fed["z"])
    # the backbone itself is untouched (deep copy) and shares no parameter with the new model
    assert isinstance(backbone.fc, nn.Linear) and backbone.fc.out_features == 10
    assert not {id(p) for p in backbone.parameters()} & {id(p) for p in model.parameters()}


def test_from_backbone_vgg_like_replaces_classifier_last():
    model = TransferModel.from_backbone(TinyVGG(), num_classes=7)
    assert isinstance(model.encoder.classifier[3], nn.Identity)
    assert isinstance(model.encoder.classifier[0], nn.Linear)  # earlier Linears are kept
    assert model.head.in_features == 32
    assert model.embed(torch.randn(2, 3, 8, 8)).shape == (2, 32)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 7)


def test_from_backbone_sequential_drops_trailing_softmax():
    backbone = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 5), nn.Softmax(dim=1))
    model = TransferModel.from_backbone(backbone, num_classes=2)
    assert isinstance(model.encoder[2], nn.Identity) and isinstance(model.encoder[3], nn.Identity)
    x = torch.randn(3, 4)
    assert torch.equal(model.embed(x), torch.relu(backbone[0](x)))
    logits = model(x)
    assert logits.shape == (3, 2) and not torch.allclose(logits.exp().sum(1), torch.ones(3))


def test_from_backbone_in_place_when_asked():
    backbone = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 5))
    model = TransferModel.from_backbone(backbone, 3, copy_backbone=False)
    assert model.encoder is backbone and isinstance(backbone[2], nn.Identity)


def test_from_backbone_of_a_transfer_model_swaps_its_head():
    old = default_model(3, 5, hidden_sizes=(6,))
    new = TransferModel.from_backbone(old, 2)
    assert new.head.in_features == 6 and new.head.out_features == 2
    x = torch.randn(4, 3)
    assert torch.equal(new.embed(x), old.embed(x))


class HeadRegisteredFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 5)
        self.proj = nn.Linear(4, 8)  # registered last, but not the output layer

    def forward(self, x):
        return self.head(torch.relu(self.proj(x)))


@pytest.mark.parametrize("backbone, words", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "no nn.Linear"),
    (nn.Sequential(nn.Linear(4, 9), nn.Linear(9, 5), nn.BatchNorm1d(5)), "has parameters"),
    (nn.Linear(4, 2), "single nn.Linear"),
    (nn.Sequential(nn.Linear(4, 9), nn.LazyLinear(3)), "LazyLinear"),
])
def test_from_backbone_errors(backbone, words):
    with pytest.raises(ValueError, match=words):
        TransferModel.from_backbone(backbone, 3)


def test_from_backbone_example_input_catches_a_linear_that_is_not_the_output():
    with pytest.raises(ValueError, match="does not look like the classifier head"):
        TransferModel.from_backbone(HeadRegisteredFirst(), 3, example_input=torch.randn(2, 4))
    ok = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 5))
    assert TransferModel.from_backbone(ok, 3, example_input=torch.randn(2, 4))(torch.randn(2, 4)).shape == (2, 3)


def test_from_backbone_argument_checks():
    with pytest.raises(TypeError, match="backbone"):
        TransferModel.from_backbone("resnet", 3)
    with pytest.raises(ValueError, match="num_classes"):
        TransferModel.from_backbone(TinyVGG(), 0)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        TransferModel.from_backbone(TinyVGG(), 2.0)
    with pytest.raises(TypeError, match="copy_backbone must be True or False"):
        TransferModel.from_backbone(TinyVGG(), 2, copy_backbone="no")
    with pytest.raises(TypeError, match="num_classes must be an int"):
        ClassifierHead(8, 2.0)


def test_from_backbone_torchvision_resnet18():
    tv = pytest.importorskip("torchvision")
    model = TransferModel.from_backbone(tv.models.resnet18(weights=None), num_classes=4)
    assert model.head.in_features == 512
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
