"""Image encoders for the autoencoder example: images (B, C, H, W) -> codes (B, code_size).

* `ConvEncoder` - the seed's best encoder: unpadded 3x3 convolutions with ReLU, channels
  (16, 24, 32), then one Linear over the flattened feature map (32 * 26 * 26 -> code for 32x32).
  Submodule names follow the seed's `EncoderConv2d` (`convolution.layers.*`, `linear`).
* `ResNet18Encoder` - torchvision's resnet18 without its average pooling and classifier, then
  Flatten and Linear (the seed's other option). Random init by default; ImageNet weights are
  loaded only from the local torch hub cache, never downloaded here.

Both take an optional grid head for decoders with a local latent grid (`grid_size` g,
`grid_channels` c): the code is then [grid | global] with the grid part (c*g*g floats, channels
first, the layout INRDecoder reads) from the body's spatial features (average-pooled to g x g, a
1x1 conv to c channels) and the global part from the usual Linear head, now code_size - c*g*g
wide; the total code size is unchanged. Without a grid the encoders are exactly the seed's.
"""
import math
import os
from typing import Sequence, Tuple

import torch
from torch import nn

ENCODERS = ("conv", "resnet18")
RESNET_WEIGHTS = ("none", "imagenet")


def _check_shape(shape) -> Tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape!r}")
    return shape


def _check_code_size(code_size) -> int:
    if not isinstance(code_size, int) or code_size < 1:
        raise ValueError(f"code_size must be a positive int, got {code_size!r}")
    return code_size


def _check_grid(code_size: int, grid_size, grid_channels) -> Tuple[int, int, int]:
    """(g, c, global floats) after checking that the grid fits in the code."""
    grid_size, grid_channels = int(grid_size), int(grid_channels)
    if grid_size < 0 or (grid_size and grid_channels < 1):
        raise ValueError(f"grid_size must be >= 0 and grid_channels >= 1 with a grid, got "
                         f"grid_size={grid_size}, grid_channels={grid_channels}")
    grid_floats = grid_size ** 2 * grid_channels if grid_size else 0
    if grid_floats >= code_size:
        raise ValueError(f"a {grid_size}x{grid_size}x{grid_channels} grid ({grid_floats} floats) "
                         f"leaves no global part in code_size={code_size}")
    return grid_size, grid_channels, code_size - grid_floats


class _GridHead(nn.Module):
    """Body features (B, F, h, w) -> grid codes (B, c*g*g): pool to g x g, 1x1 conv to c."""

    def __init__(self, features: int, grid_size: int, grid_channels: int):
        super().__init__()
        self.grid_size = grid_size
        self.conv = nn.Conv2d(features, grid_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(features, self.grid_size)
        return self.conv(pooled).flatten(1)   # channels first: (c, g, g)


class _ConvBlock(nn.Module):
    """The seed's Conv2dBlock: conv, act, conv, act, ... in one Sequential named `layers`."""

    def __init__(self, channels: Sequence[int], kernel_size: int):
        super().__init__()
        layers = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size), nn.ReLU()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvEncoder(nn.Module):
    """Conv2d(C, c1, k) ReLU ... Conv2d(c_{n-1}, c_n, k) ReLU, Flatten, Linear(-> code_size)."""

    def __init__(self, shape=(3, 32, 32), code_size: int = 102,
                 channels: Sequence[int] = (16, 24, 32), kernel_size: int = 3,
                 grid_size: int = 0, grid_channels: int = 0):
        super().__init__()
        self.shape = _check_shape(shape)
        code_size = _check_code_size(code_size)
        grid_size, grid_channels, global_size = _check_grid(code_size, grid_size, grid_channels)
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be positive ints, got {channels!r}")
        out_size = self.shape[1] - len(channels) * (kernel_size - 1)
        if min(out_size, self.shape[2] - len(channels) * (kernel_size - 1)) < 1:
            raise ValueError(f"images of shape {self.shape} are too small for {len(channels)} "
                             f"unpadded {kernel_size}x{kernel_size} convolutions")
        self.convolution = _ConvBlock((self.shape[0],) + channels, kernel_size)
        with torch.no_grad():
            features = math.prod(self.convolution(torch.zeros(1, *self.shape)).shape[1:])
        self.linear = nn.Linear(features, global_size)
        self.grid_head = _GridHead(channels[-1], grid_size, grid_channels) if grid_size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _codes(self.convolution(x), self.linear, self.grid_head)


def _codes(features: torch.Tensor, linear: nn.Module, grid_head) -> torch.Tensor:
    global_codes = linear(features.flatten(1))
    if grid_head is None:
        return global_codes
    return torch.cat([grid_head(features), global_codes], dim=1)


def resnet18_weights_path() -> str:
    """Where torchvision keeps the ImageNet resnet18 weights once downloaded."""
    import torchvision
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


class ResNet18Encoder(nn.Module):
    """resnet18 trunk (conv1 ... layer4, no avgpool/fc), Flatten, Linear(-> code_size)."""

    def __init__(self, shape=(3, 32, 32), code_size: int = 102, weights: str = "none",
                 grid_size: int = 0, grid_channels: int = 0):
        super().__init__()
        import torchvision
        self.shape = _check_shape(shape)
        code_size = _check_code_size(code_size)
        grid_size, grid_channels, global_size = _check_grid(code_size, grid_size, grid_channels)
        if weights not in RESNET_WEIGHTS:
            raise ValueError(f"weights must be one of {RESNET_WEIGHTS}, got {weights!r}")
        if weights == "imagenet" and self.shape[0] != 3:
            raise ValueError(f"ImageNet weights need 3 input channels, got shape {self.shape}")
        resnet = torchvision.models.resnet18(weights=None)
        if weights == "imagenet":
            resnet.load_state_dict(torch.load(_existing_weights(), map_location="cpu",
                                              weights_only=True))
        if self.shape[0] != 3:
            resnet.conv1 = nn.Conv2d(self.shape[0], 64, 7, 2, 3, bias=False)
        self.trunk = nn.Sequential(*list(resnet.children())[:-2])
        with torch.no_grad():
            self.trunk.eval()
            features = math.prod(self.trunk(torch.zeros(1, *self.shape)).shape[1:])
            self.trunk.train()
        self.linear = nn.Linear(features, global_size)
        # On 32x32 tiles the trunk's map is 1x1, so this grid is spatially constant: the conv
        # encoder is the one to use with a grid.
        self.grid_head = _GridHead(512, grid_size, grid_channels) if grid_size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _codes(self.trunk(x), self.linear, self.grid_head)


def _existing_weights() -> str:
    path = resnet18_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"ImageNet weights for resnet18 are not on disk (expected {path}); they are never "
            "downloaded here. Fetch them once where there is network access, e.g. "
            "`python -c \"import torchvision; "
            "torchvision.models.resnet18(weights='IMAGENET1K_V1')\"`, "
            "or use random init (--encoder-weights none)")
    return path


def build_encoder(name: str, shape=(3, 32, 32), code_size: int = 102,
                  weights: str = "none", grid_size: int = 0, grid_channels: int = 0) -> nn.Module:
    """The encoder called `name` ("conv" or "resnet18"), with a grid head when grid_size > 0."""
    if name == "conv":
        if weights != "none":
            raise ValueError(f"encoder 'conv' has no pretrained weights, got weights={weights!r}")
        return ConvEncoder(shape, code_size, grid_size=grid_size, grid_channels=grid_channels)
    if name == "resnet18":
        return ResNet18Encoder(shape, code_size, weights, grid_size, grid_channels)
    raise ValueError(f"encoder must be one of {ENCODERS}, got {name!r}")
