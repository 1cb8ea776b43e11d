"""Residual blocks alone: ``fusecc bench --blocks``.

Each block is built from plain ``torch.nn`` layers (conv, batch norm,
activation; random weights, eval mode) at the shapes the block-fusion issue
names, and timed against eager, inductor (default and freezing), ONNX
Runtime, and fusecc with block fusion switched off (every layer its own
kernel) - so the table shows what fusing the block buys. Inputs are
channels-last, as they are between the layers of a channels-last network,
except a stem's: it reads the channels-first image.
"""

from __future__ import annotations

import torch
from torch import nn

from .harness import cases_main

PEERS = ["eager", "inductor", "inductor_freeze", "onnxruntime", "fusecc_unfused", "fusecc"]


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class InvertedResidual(nn.Module):
    """MobileNetV2: 1x1 expand, ReLU6, depthwise 3x3, ReLU6, 1x1 project (+ x)."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1):
        super().__init__()
        hidden = cin * expand
        layers = [*_conv_bn(cin, hidden), nn.ReLU6()] if expand != 1 else []
        layers += [*_conv_bn(hidden, hidden, 3, stride, hidden), nn.ReLU6(), *_conv_bn(hidden, cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class Stem(nn.Module):
    """A network's stem and the block it feeds (MobileNetV2's first layers):
    a 3x3/s2 convolution over the image, ReLU6, then a block without expand -
    depthwise 3x3, ReLU6, 1x1 project. ``tf_padding`` pads the image as
    Hugging Face's MobileNetV2 does (one column and row, right and bottom)."""

    image_input = True  # fed the channels-first image, not a channels-last activation

    def __init__(self, cin: int = 3, mid: int = 32, cout: int = 16, stride: int = 2, tf_padding: bool = False):
        super().__init__()
        self.tf_padding = tf_padding
        conv = nn.Conv2d(cin, mid, 3, stride, 0 if tf_padding else 1, bias=False)
        self.body = nn.Sequential(
            conv, nn.BatchNorm2d(mid), nn.ReLU6(), *_conv_bn(mid, mid, 3, 1, mid), nn.ReLU6(), *_conv_bn(mid, cout)
        )

    def forward(self, x):
        return self.body(nn.functional.pad(x, (0, 1, 0, 1)) if self.tf_padding else x)


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3, ReLU, 3x3, + x, ReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c, c, 3), nn.ReLU(), *_conv_bn(c, c, 3))

    def forward(self, x):
        return torch.relu(self.body(x) + x)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7, layer norm over channels, 1x1 expand (as a
    Linear on NHWC), GELU, 1x1 project, layer scale, + x - written as
    Hugging Face's ``ConvNextLayer`` writes it (permutes around the MLP)."""

    def __init__(self, c: int, expand: int = 4, act: type[nn.Module] = nn.GELU, kernel: int = 7):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1 = nn.Linear(c, expand * c)
        self.act = act()
        self.pwconv2 = nn.Linear(expand * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)  # trained scales are far from the 1e-6 init

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, ReLU, 3x3 (stride), ReLU, 1x1 expand,
    + shortcut (identity, or a strided 1x1 projection), ReLU."""

    def __init__(self, cin: int, mid: int, stride: int = 1):
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(
            *_conv_bn(cin, mid), nn.ReLU(), *_conv_bn(mid, mid, 3, stride), nn.ReLU(), *_conv_bn(mid, cout)
        )
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x):
        return torch.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics, so folding them is tested too."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


# name -> (module factory, input shape without batch)
BLOCKS = {
    "stem 3-32-16 s2 @224": (lambda: Stem(3, 32, 16, tf_padding=True), (3, 224, 224)),
    "inverted_residual 24-144-24 @56": (lambda: InvertedResidual(24, 24, 6), (24, 56, 56)),
    "inverted_residual 32-192-32 @28": (lambda: InvertedResidual(32, 32, 6), (32, 28, 28)),
    "inverted_residual 96-576-96 @14": (lambda: InvertedResidual(96, 96, 6), (96, 14, 14)),
    "inverted_residual 24-144-32 s2 @56": (lambda: InvertedResidual(24, 32, 6, stride=2), (24, 56, 56)),
    "convnext 96 @56": (lambda: ConvNeXtBlock(96), (96, 56, 56)),
    "convnext 384 @14": (lambda: ConvNeXtBlock(384), (384, 14, 14)),
    "basic 64 @56": (lambda: BasicBlock(64), (64, 56, 56)),
    "bottleneck 256-64-256 @56": (lambda: Bottleneck(256, 64), (256, 56, 56)),
    "bottleneck 512-128-512 @28": (lambda: Bottleneck(512, 128), (512, 28, 28)),
}


def _case(factory, shape):
    def build(batch: int):
        model = _randomize_bn(factory())
        x = torch.randn(batch, *shape)
        # inside a network a block's input comes from channels-last layers; a stem reads the image
        return model, x if getattr(model, "image_input", False) else x.to(memory_format=torch.channels_last)

    return build


def main(argv: list[str] | None = None) -> int:
    cases = {name: _case(factory, shape) for name, (factory, shape) in BLOCKS.items()}
    return cases_main(argv, "--blocks", __doc__.split("\n\n")[0], cases, [1, 8], PEERS)
