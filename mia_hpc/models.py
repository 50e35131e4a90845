"""Shadow architectures: the CNNs of Carlini et al.'s LiRA code, sized to the input, and an MLP.

The CNN follows objax's ``ConvNet`` used by the LiRA reference code (``cnn32-3-max``): a 3x3 stem,
then per scale two 3x3 convolutions with leaky ReLU and a 2x2 max-pool, doubling the width each
scale, and a 3x3 convolution to the classes followed by global average pooling. "Sized to the
input" means the number of scales is chosen so the last feature map is still at least 2x2
(3 scales for 28x28 or 32x32 as in the paper, 2 for the 8x8 digits).

Models are plain ``nn.Module``s without BatchNorm, so they batch over shadows with
``torch.func.stack_module_state`` + ``vmap`` with no per-model running statistics to manage.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ARCHS = ("cnn32", "cnn64", "mlp")


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


def build_model(arch: str, in_channels: int, n_classes: int, image_size: int, width: int = 0) -> nn.Module:
    """Instantiate an architecture by its spec name; ``width`` 0 keeps the architecture's own."""
    if arch in ("cnn32", "cnn64"):
        return CNN(in_channels, n_classes, image_size, filters=width or int(arch[3:]))
    if arch == "mlp":
        return MLP(in_channels, n_classes, image_size, width=width or 256)
    raise ValueError(f"model.arch: unknown architecture {arch!r}; one of {', '.join(ARCHS)}")


def embed_dim(arch: str, in_channels: int, n_classes: int, image_size: int, width: int = 0) -> int:
    """Size of :meth:`embed`'s output for an architecture."""
    with torch.no_grad():
        model = build_model(arch, in_channels, n_classes, image_size, width)
        return int(model.embed(torch.zeros(1, in_channels, image_size, image_size)).shape[1])


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates x2 of one forward pass on one sample (convs and linears only)."""
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
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return flops

