"""The batched data path: decode and resize in worker processes, compute on the device."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import load_resized, position


class _ResizedImages(Dataset):
    def __init__(self, sources, size):
        self.sources = sources
        self.size = size

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, i):
        pixels, hw = load_resized(self.sources[i], self.size, index=position(self.sources, i))
        return torch.from_numpy(np.array(pixels, copy=True)), torch.tensor(hw, dtype=torch.int64)


def resolve_num_workers(num_workers, device, n_images, batch_size) -> int:
    """``"auto"``: on CUDA, up to 8 decoding workers (half the CPU cores) when there is more
    than one batch; on CPU none, as the model already uses every core."""
    if num_workers != "auto":
        return int(num_workers)
    if device.type != "cuda" or n_images <= batch_size:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def iter_image_batches(sources, size, *, batch_size, num_workers, device, verbose=False, desc=""):
    """Yield ``(start, pixels, hw)`` batches.

    ``pixels`` is a float32 tensor (B, 3, size, size) in [0, 1] on ``device``; ``hw`` an int64
    array (B, 2) of original heights and widths. Decoding and resizing run in ``num_workers``
    worker processes (0: in this process), overlapping with the model.
    """
    dataset = _ResizedImages(sources, size)
    num_workers = resolve_num_workers(num_workers, device, len(dataset), batch_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    progress = None
    if verbose:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(dataset), desc=desc, unit="img")
    start = 0
    try:
        for pixels, hw in loader:
            x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
            yield start, x, hw.numpy()
            start += len(hw)
            if progress is not None:
                progress.update(len(hw))
    finally:
        if progress is not None:
            progress.close()
