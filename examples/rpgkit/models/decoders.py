"""The example's decoders by name, built from a run's config (rpgkit.config).

* "seed": fastinr.ImageManifoldDecoder, the seed's decoder (fused backends).
* "inr":  fastinr.INRDecoder, the sharper-decoder variants (fused backends, every variant).
* "conv": fastinr.ConvDecoder, a transposed-convolution baseline with the same code size.

Each has `macs_per_pixel(shape)`, its cost in multiply-adds per output pixel.
"""
from torch import nn

from fastinr.conv_decoder import ConvDecoder
from fastinr.inr_decoder import INRDecoder
from fastinr.modules import ImageManifoldDecoder
from rpgkit.config import SHAPE

DECODERS = ("seed", "inr", "conv")


def build_decoder(cfg: dict) -> nn.Module:
    """The decoder of `cfg["decoder"]` for SHAPE images, with the run's settings."""
    if cfg["decoder"] == "inr":
        return INRDecoder(
            cfg["code_size"], SHAPE[0], hidden=cfg["hidden"], num_blocks=cfg["blocks"],
            layers_per_block=cfg["layers_per_block"], activation=cfg["activation"],
            conditioning=cfg["conditioning"], norm=cfg["norm"], output=cfg["inr_output"],
            embedding=cfg["embedding"], freqs=cfg["freqs"], num_freqs=cfg["num_freqs"],
            max_freq=cfg["max_freq"], train_size=SHAPE[1], sigma=cfg["sigma"],
            grid_size=cfg["grid_size"], grid_channels=cfg["grid_channels"],
            grid_blend=cfg["grid_blend"], default_shape=SHAPE[1:], seed=cfg["seed"],
            backend=cfg["backend"])
    if cfg["decoder"] == "conv":
        return ConvDecoder(cfg["code_size"], SHAPE[0], channels=cfg["conv_channels"], size=SHAPE[1])
    decoder = ImageManifoldDecoder(
        cfg["code_size"], SHAPE[0], num_hidden=cfg["hidden"], num_blocks=cfg["blocks"],
        num_layers_per_block=cfg["layers_per_block"], pos_embedding_freqs=cfg["freqs"],
        batch_norm=cfg["batch_norm"] != "none", default_shape=SHAPE[1:],
        activation=cfg["activation"], activation_out=cfg["activation_out"],
        batch_norm_stats="batch" if cfg["batch_norm"] == "batch" else "image",
        backend=cfg["backend"])
    if cfg["activation_out"] == "none":
        decoder.init_output_bias(0.5)  # mid grey, the middle of the [0, 1] target range
    return decoder
