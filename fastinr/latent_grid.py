"""The geometry of a local latent grid: g x g cells of c channels over [-1, 1]², centres at the
cell middles, sampled at query points (x, y).

Bilinear sampling ("bilinear") blends the 4 nearest cell values and gives each point its position
relative to its own cell, in cells ([-0.5, 0.5]). LIIF's local ensemble ("area") instead runs
the MLP once per cell centre around the point (4 members), each with its cell's values and the
point relative to that centre ([-1, 1]), and blends the 4 results by the area of the rectangle
between the point and the opposite centre. Past the outer centres both sides clamp to the
border cell. Pure geometry: no parameters; INRDecoder owns the grid's Linear.
"""
import itertools
from typing import List, Tuple

import torch
import torch.nn.functional as F

AREA_MEMBERS = 4   # "area": the cell centres around each query point


class LatentGrid:
    def __init__(self, size: int, channels: int):
        self.size, self.channels = int(size), int(channels)

    def relative_to_cell(self, t: torch.Tensor) -> torch.Tensor:
        """Coordinates in [-1, 1] relative to the centre of their cell, in cells (-0.5 .. 0.5)."""
        g = self.size
        cell = ((t + 1) * (g / 2)).floor().clamp(0, g - 1)
        return (t + 1) * (g / 2) - cell - 0.5

    def cell_weights(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """For coordinates t (n,) along one axis: their bilinear weights over the g cells (n, g)
        and their position relative to their cell (n,), exactly as `sample` computes them (the
        weights come from grid_sample itself, sampling an identity grid)."""
        g = self.size
        identity = torch.eye(g, device=t.device, dtype=t.dtype).reshape(1, g, 1, g)
        at = torch.stack([t, torch.zeros_like(t)], dim=1).reshape(1, 1, -1, 2)
        weights = F.grid_sample(identity, at, mode="bilinear", padding_mode="border",
                                align_corners=False)[0, :, 0].t()
        return weights, self.relative_to_cell(t)

    def sample(self, grid: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """(B, P, c + 2): the grid (B, c, g, g) sampled bilinearly at xy (B, P, 2), and xy relative
        to its cell."""
        sampled = F.grid_sample(grid, xy[:, None], mode="bilinear", padding_mode="border",
                                align_corners=False)[:, :, 0].transpose(1, 2)
        return torch.cat([sampled, self.relative_to_cell(xy)], dim=-1)

    def area_members(self, xy: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For query points xy (..., 2), the 4 cell centres around each, rows then columns: per
        member its flat cell index (...), xy relative to that centre in cells (..., 2) and its blend
        weight (...); the weights sum to 1."""
        g = self.size
        axes = []
        for t in (xy[..., 1], xy[..., 0]):   # y, x
            u = (t + 1) * (g / 2) - 0.5      # in cells; the centres are at 0 .. g-1
            below = u.floor()
            axes.append([((below + a).clamp(0, g - 1), u - (below + a).clamp(0, g - 1),
                          1 - (u - below - a).abs()) for a in (0, 1)])
        return [((iy * g + ix).long(), torch.stack([rx, ry], dim=-1), wy * wx)
                for (iy, ry, wy), (ix, rx, wx) in itertools.product(*axes)]

    def area_features(self, grid: torch.Tensor, xy: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """"area" at query points xy (B, P, 2) of the grid (B, c, g, g): each member's cell values
        ⊕ rel, (4B, P, c + 2) member-major, and the blend weights (4, B, P, 1)."""
        c = self.channels
        cells = grid.reshape(grid.shape[0], c, -1)
        features, weights = [], []
        for index, rel, weight in self.area_members(xy):
            values = cells.gather(2, index[:, None].expand(-1, c, -1)).transpose(1, 2)
            features.append(torch.cat([values, rel], dim=-1))
            weights.append(weight[..., None])
        return torch.cat(features), torch.stack(weights)
