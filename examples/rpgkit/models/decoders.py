"""The example's decoders by name, and their cost in multiply-adds per output pixel.

* "seed": fastinr.ImageManifoldDecoder, the seed's decoder (fused backends).
* "inr":  fastinr.INRDecoder, the sharper-decoder variants (fused backends, every variant).
* "conv": fastinr.ConvDecoder, a transposed-convolution baseline with the same code size.
"""
import torch
from torch import nn

from fastinr.conv_decoder import ConvDecoder
from fastinr.inr_decoder import INRDecoder
from fastinr.modules import ImageManifoldDecoder

DECODERS = ("seed", "inr", "conv")


def decoder_macs_per_pixel(decoder: nn.Module, shape=(32, 32)) -> float:
    """Multiply-adds of one image's decode at `shape`, divided by its pixels.

    Per-image work (code projections, modulation, the conv decoder's low-resolution stages) is
    included, spread over the pixels; normalization, activations and grid sampling are not counted.
    """
    pixels = shape[0] * shape[1]
    if isinstance(decoder, ImageManifoldDecoder):
        # The seed concatenates the code to every pixel's embedding: its first layer is per pixel.
        return float(sum(m.in_features * m.out_features for m in decoder.modules()
                         if isinstance(m, nn.Linear)))
    if isinstance(decoder, INRDecoder):
        per_image = sum(m.in_features * m.out_features
                        for m in (decoder.code_in, decoder.modulation) if m is not None)
        return decoder.macs_per_pixel() + per_image / pixels
    if isinstance(decoder, ConvDecoder):
        macs = []

        def count(module, inputs, output):
            if isinstance(module, nn.Linear):
                macs.append(module.in_features * module.out_features * output.shape[0])
            else:
                kh, kw = module.kernel_size
                macs.append(output.numel() * module.in_channels // module.groups * kh * kw)

        hooks = [m.register_forward_hook(count) for m in decoder.modules()
                 if isinstance(m, (nn.Linear, nn.Conv2d))]
        try:
            with torch.no_grad():
                out = decoder(torch.zeros(1, decoder.code_size,
                                          device=decoder.project.weight.device))
        finally:
            for hook in hooks:
                hook.remove()
        return sum(macs) / (out.shape[-2] * out.shape[-1])
    raise TypeError(f"decoder: no cost model for {type(decoder).__name__}")

