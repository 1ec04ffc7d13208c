"""Models for the examples: encoders and the encoder + implicit decoder autoencoder."""
from fastinr.models.autoencoder import EncoderDecoder
from fastinr.models.encoders import (ENCODERS, RESNET_WEIGHTS, ConvEncoder, ResNet18Encoder,
                                     build_encoder, resnet18_weights_path)

__all__ = ["ENCODERS", "RESNET_WEIGHTS", "ConvEncoder", "EncoderDecoder", "ResNet18Encoder",
           "build_encoder", "resnet18_weights_path"]
