"""How INRDecoder's global code conditions its MLP: one class per conditioning.

A new conditioning that lowers to the decode contract is a class here and its line in
CONDITIONINGS; INRDecoder, its lowering (inr_lowering.py) and its plain-PyTorch path for query
points (inr_points.py) only call these methods. For the global code g (B, G) of each image:

    z0 = W_e·emb(p) + b + [code_weight·g]        the contract's code ⊕ embedding input
    z  -> mod_l(z) with the per-image mods(g)    the contract's spec.modulation (`modulation`)

A conditioning makes its parameters on the decoder itself, so their names are the decoder's
state_dict keys (`code_in`, `modulation`: checkpoints keep loading), in two places of the
decoder's construction (`build_input` with the first layer, `build_modulation` last): the order
of the parameters is the order of a saved optimizer's states.
"""
from typing import Optional

import torch
from torch import nn


class Conditioning:
    """The interface, and the defaults of a conditioning that adds nothing."""
    modulation = "none"      # the contract's spec.modulation this conditioning lowers to
    needs_global = False     # whether it fails without a global part of the code

    def build_input(self, decoder, global_size: int, hidden: int) -> None:
        """Create the first layer's parameters on `decoder` (an INRDecoder being built)."""
        decoder.code_in = None

    def build_modulation(self, decoder, global_size: int, hidden: int) -> None:
        """Create the modulation's parameters on `decoder`, after all its other parameters."""
        decoder.modulation = None

    def code_weight(self, decoder) -> Optional[torch.Tensor]:
        """W_c (hidden, G), added as W_c·g to the first layer's pre-activation, or None."""
        return None

    def mods(self, decoder, global_code: torch.Tensor) -> Optional[torch.Tensor]:
        """The per-image modulation (B, M, k, hidden) of `modulation`, or None."""
        return None

    def per_image_macs(self, decoder) -> int:
        """Multiply-adds per image of the code's projections (macs_per_pixel spreads them)."""
        return 0


class Concat(Conditioning):
    """The seed's: the code is concatenated to the embedding, so W_c·g joins the first layer."""

    def build_input(self, decoder, global_size, hidden):
        decoder.code_in = nn.Linear(global_size, hidden, bias=False) if global_size else None

    def code_weight(self, decoder):
        return decoder.code_in.weight if decoder.code_in is not None else None

    def per_image_macs(self, decoder):
        return decoder.code_in.in_features * decoder.code_in.out_features if decoder.code_in is not None else 0


class Shift(Conditioning):
    """mod_l(z) = z + s_l(g): one shift per modulated layer, a Linear of the code."""
    modulation = "shift"
    needs_global = True
    per_layer = 1            # vectors of `hidden` per modulated layer

    def build_modulation(self, decoder, global_size, hidden):
        decoder.modulation = nn.Linear(global_size, decoder.modulated_layers * self.per_layer * hidden)

    def mods(self, decoder, global_code):
        return decoder.modulation(global_code).reshape(global_code.shape[0], decoder.modulated_layers,
                                                       self.per_layer, decoder.hidden)

    def per_image_macs(self, decoder):
        return decoder.modulation.in_features * decoder.modulation.out_features


class Film(Shift):
    """mod_l(z) = z * (1 + g_l(g)) + s_l(g), starting at the identity (g = s = 0)."""
    modulation = "film"
    per_layer = 2

    def build_modulation(self, decoder, global_size, hidden):
        super().build_modulation(decoder, global_size, hidden)
        nn.init.zeros_(decoder.modulation.weight)
        nn.init.zeros_(decoder.modulation.bias)


CONDITIONINGS = {"concat": Concat(), "shift": Shift(), "film": Film()}
