"""Shadow architectures: the CNNs of Carlini et al.'s LiRA code, ResNet-9 and ResNet-18, and an MLP.

CNN32 / CNN64
    objax's ``ConvNet`` as used by the LiRA reference code (``cnn32-3-max``): a 3x3 stem, then per
    scale two 3x3 convolutions with leaky ReLU and a 2x2 max-pool, doubling the width each scale,
    and a 3x3 convolution to the classes followed by global average pooling. "Sized to the input"
    means the number of scales is chosen so the last feature map is still at least 2x2 (3 scales
    for 28x28 or 32x32 as in the paper, 2 for the 8x8 digits). No normalization layers.
ResNet-9
    The DAWNBench ResNet-9 of Page (the one airbench descends from): a conv-BN-ReLU stem of width
    ``w`` (64), then conv(2w)-pool + residual(2 conv), conv(4w)-pool, conv(8w)-pool + residual,
    global max-pool, a bias-free linear layer, and logits scaled by 1/8 (Page's trick that lets the
    high learning rates of the short CIFAR recipes train stably).
ResNet-18
    The CIFAR variant of He et al.'s ResNet-18 (3x3 stem, no stem pooling; BasicBlocks [2, 2, 2, 2]
    of widths w, 2w, 4w, 8w with strides 1, 2, 2, 2; global average pooling; linear).

Both ResNets work on 32x32 (CIFAR), 28x28 (MNIST: 28 -> 14 -> 7 -> 3) and 8x8 inputs, because
they end in global pooling; ``width`` scales every layer (tests and ``--tiny`` use 4).

Normalization under batching (``model.norm``). The batched trainer stacks K shadows' parameters
*and buffers* with ``torch.func.stack_module_state`` and calls ``functional_call`` per shadow
(under ``vmap`` or one after the other). BatchNorm therefore needs no special treatment: each
shadow's ``running_mean`` / ``running_var`` / ``num_batches_tracked`` are a slice of the stacked
buffers, its batch statistics are computed over its own minibatch only (``vmap`` maps the whole
per-model function, so the batch axis BN reduces over is that shadow's batch), and the in-place
running-statistics update of ``F.batch_norm`` writes into that shadow's slice. In evaluation the
trainer switches the module to ``eval()`` and BN uses each shadow's own running statistics. This
is why we keep BatchNorm (``norm = "batch"``, the default) rather than replace it: it is the
normalization the paper's ResNets and their accuracies (Table 1) come from, and it is exact —
``tests/test_models.py`` trains K ResNet-9 shadows batched and each alone and checks parameters,
running statistics and logits agree to float tolerance.

``norm = "group"`` swaps every BatchNorm for GroupNorm (groups of up to 16 channels). It exists
for DP-SGD: per-sample gradients (Opacus's rule, and ours in ``train/dp_sgd.py``) are undefined
for BatchNorm, which mixes the samples of a batch, so DP-SGD with a ResNet needs it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ARCHS = ("cnn32", "cnn64", "mlp", "resnet9", "resnet18")
NORMS = ("batch", "group")


def n_scales(image_size: int, max_scales: int = 3) -> int:
    """Number of pooling scales that keeps the final feature map at least 2x2."""
    return max(1, min(max_scales, int(math.log2(image_size)) - 1))


class CNN(nn.Module):
    """LiRA-style CNN: ``filters`` channels at the first scale, doubled per scale."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int, filters: int = 32,
                 filters_max: int = 1024):
        super().__init__()
        scales = n_scales(image_size)

        def nf(scale: int) -> int:
            return min(filters_max, filters << scale)

        layers: list[nn.Module] = [nn.Conv2d(in_channels, nf(0), 3, padding=1), nn.LeakyReLU(0.2)]
        for i in range(scales):
            layers += [nn.Conv2d(nf(i), nf(i), 3, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(nf(i), nf(i + 1), 3, padding=1), nn.LeakyReLU(0.2),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(nf(scales), n_classes, 3, padding=1)
        # He-normal init as in objax (the LiRA code's framework); PyTorch's default init is too
        # small for this BatchNorm-free stack and SGD then stalls at chance for many epochs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).mean(dim=(2, 3))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: the last feature map, averaged over space."""
        return self.features(x).mean(dim=(2, 3))


class MLP(nn.Module):
    """Two hidden layers; the cheap baseline for smoke tests."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int, width: int = 256):
        super().__init__()
        d = in_channels * image_size * image_size
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: the last hidden layer."""
        return self.net[:-1](x)


# --- ResNets ------------------------------------------------------------------------------------

def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm with groups of at most 16 channels (at least one group)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 16), channels)
    raise ValueError(f"model.norm: must be one of {', '.join(NORMS)}, got {kind!r}")


def conv_bn(c_in: int, c_out: int, norm: str, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias: the normalization has one), normalization, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), norm_layer(norm, c_out),
                         nn.ReLU(inplace=False))


class Residual(nn.Module):
    """``x + f(x)`` (ResNet-9's identity-shortcut blocks)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class ResNet9(nn.Module):
    """Page's DAWNBench ResNet-9 (widths w, 2w, 4w, 8w; w = 64), see the module docstring."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int, width: int = 64, norm: str = "batch",
                 scale: float = 0.125):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(in_channels, w, norm),
            conv_bn(w, 2 * w, norm), nn.MaxPool2d(2),
            Residual(nn.Sequential(conv_bn(2 * w, 2 * w, norm), conv_bn(2 * w, 2 * w, norm))),
            conv_bn(2 * w, 4 * w, norm), nn.MaxPool2d(2),
            conv_bn(4 * w, 8 * w, norm), nn.MaxPool2d(2),
            Residual(nn.Sequential(conv_bn(8 * w, 8 * w, norm), conv_bn(8 * w, 8 * w, norm))),
            nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(8 * w, n_classes, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: the globally max-pooled last feature map."""
        return self.features(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-norm layers with a shortcut (1x1 conv-norm when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          norm_layer(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (BasicBlocks [2, 2, 2, 2], widths w..8w; w = 64), see the module docstring."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int, width: int = 64, norm: str = "batch"):
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.Conv2d(in_channels, w, 3, padding=1, bias=False), norm_layer(norm, w),
                                   nn.ReLU()]
        c_in = w
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = w << i
            layers += [BasicBlock(c_in, c_out, stride, norm), BasicBlock(c_out, c_out, 1, norm)]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: the globally averaged last feature map."""
        return self.features(x)


# --- construction -------------------------------------------------------------------------------

def build_model(arch: str, in_channels: int, n_classes: int, image_size: int, width: int = 0,
                norm: str = "batch") -> nn.Module:
    """Instantiate an architecture by its spec name; ``width`` 0 keeps the architecture's own.

    ``norm`` ('batch' or 'group') applies to the ResNets; the CNNs and the MLP have no
    normalization layers.
    """
    if arch in ("cnn32", "cnn64"):
        return CNN(in_channels, n_classes, image_size, filters=width or int(arch[3:]))
    if arch == "mlp":
        return MLP(in_channels, n_classes, image_size, width=width or 256)
    if arch == "resnet9":
        return ResNet9(in_channels, n_classes, image_size, width=width or 64, norm=norm)
    if arch == "resnet18":
        return ResNet18(in_channels, n_classes, image_size, width=width or 64, norm=norm)
    raise ValueError(f"model.arch: unknown architecture {arch!r}; one of {', '.join(ARCHS)}")


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` keeps running statistics (its eval and train forward passes differ)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def embed_dim(arch: str, in_channels: int, n_classes: int, image_size: int, width: int = 0,
              norm: str = "batch") -> int:
    """Size of :meth:`embed`'s output for an architecture."""
    with torch.no_grad():
        model = build_model(arch, in_channels, n_classes, image_size, width, norm).eval()
        return int(model.embed(torch.zeros(1, in_channels, image_size, image_size)).shape[1])


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates x2 of one forward pass on one sample (convs and linears only).

    Normalization, activations and pooling are left out: they are memory-bound and a few percent
    of the arithmetic. The model is run in eval mode (BatchNorm on one sample needs it) and left
    in the mode it was in.
    """
    flops = 0

    def conv_hook(mod: nn.Conv2d, _inp, out):
        nonlocal flops
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        flops += 2 * k * out.numel() // out.shape[0]

    def lin_hook(mod: nn.Linear, _inp, out):
        nonlocal flops
        flops += 2 * mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(lin_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return flops
