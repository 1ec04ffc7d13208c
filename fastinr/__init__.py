"""fastinr: fused kernels and drop-in modules for implicit neural representation decoders.

    color(pixel) = MLP(code ⊕ positional_embedding(x, y))

evaluated for every pixel of a batch of images at once.
"""
from fastinr.backends import available_backends, resolve_backend
from fastinr.embedding import pixel_coordinates, pos_embedding, pos_embedding_size, subpixel_coordinates
from fastinr.conv_decoder import ConvDecoder
from fastinr.inr_decoder import INRDecoder
from fastinr.modules import ImageManifoldDecoder
from fastinr.refine import refine_codes
from fastinr.running_stats import local_running_stats, sync_running_stats

__version__ = "0.1.0"

__all__ = [
    "ConvDecoder",
    "INRDecoder",
    "ImageManifoldDecoder",
    "available_backends",
    "pixel_coordinates",
    "pos_embedding",
    "pos_embedding_size",
    "refine_codes",
    "local_running_stats",
    "resolve_backend",
    "subpixel_coordinates",
    "sync_running_stats",
]
