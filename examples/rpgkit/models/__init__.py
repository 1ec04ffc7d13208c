"""Models for the examples: encoders, decoders by name and the encoder + decoder autoencoder."""
from rpgkit.models.autoencoder import EncoderDecoder
from rpgkit.models.decoders import DECODERS, decoder_macs_per_pixel
from rpgkit.models.encoders import (ENCODERS, RESNET_WEIGHTS, ConvEncoder, ResNet18Encoder,
                                     build_encoder, resnet18_weights_path)

__all__ = ["DECODERS", "ENCODERS", "RESNET_WEIGHTS", "ConvEncoder", "EncoderDecoder",
           "ResNet18Encoder", "build_encoder", "decoder_macs_per_pixel", "resnet18_weights_path"]
