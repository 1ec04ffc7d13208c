"""Models for the examples: encoders, decoders by name and the encoder + decoder autoencoder."""
from rpgkit.models.autoencoder import EncoderDecoder, build_autoencoder
from rpgkit.models.decoders import DECODERS, build_decoder
from rpgkit.models.encoders import (ENCODERS, RESNET_WEIGHTS, ConvEncoder, ResNet18Encoder,
                                     build_encoder, resnet18_weights_path)

__all__ = ["DECODERS", "ENCODERS", "RESNET_WEIGHTS", "ConvEncoder", "EncoderDecoder",
           "ResNet18Encoder", "build_autoencoder", "build_decoder", "build_encoder",
           "resnet18_weights_path"]
