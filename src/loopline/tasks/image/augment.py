"""Image augmentation (the notes' chapter 6: regularisation by varied training examples).

Applied by the training loop to training batches only, never at validation, test or
serving. Each change is drawn from the training loop's own generator, so the same seed gives
the same augmented batches and a resumed training continues them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageAugment:
    """Small random shifts, rotations, pixel noise and contrast changes; 0 turns one off.

    shift_px: up to this many pixels in each direction; rotate_deg: up to this many degrees
    either way; noise: the standard deviation of added Gaussian noise (pixels in 0..1);
    contrast: a factor drawn from [1 - contrast, 1 + contrast] around each image's mean.
    """

    shift_px: float = 0.0
    rotate_deg: float = 0.0
    noise: float = 0.0
    contrast: float = 0.0

    @property
    def active(self) -> bool:
        return any((self.shift_px, self.rotate_deg, self.noise, self.contrast))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.active:
            return images
        n, _, height, width = images.shape

        def uniform(scale: float) -> torch.Tensor:
            return (torch.rand(n, generator=generator) * 2 - 1) * scale

        out = images
        if self.shift_px or self.rotate_deg:
            angle = uniform(math.radians(self.rotate_deg))
            # affine_grid works in [-1, 1] coordinates: a pixel is 2 / side of them.
            dx, dy = uniform(self.shift_px) * 2 / width, uniform(self.shift_px) * 2 / height
            cos, sin = torch.cos(angle), torch.sin(angle)
            theta = torch.stack(
                [torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1
            ).to(images.dtype)
            grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
            out = torch.nn.functional.grid_sample(
                out, grid, padding_mode="zeros", align_corners=False
            )
        if self.contrast:
            factor = (1 + uniform(self.contrast)).view(n, 1, 1, 1).to(images.dtype)
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * factor + mean
        if self.noise:
            noise = torch.randn(out.shape, generator=generator, dtype=out.dtype) * self.noise
            out = out + noise
        return out.clamp(0.0, 1.0)
