"""Cost of an AttentionAdapter fit at CelebA size, measured on a subset and extrapolated.

    OMP_NUM_THREADS=1 python benchmarks/adapter_cost.py [--threads 1] [--subset 2048]

Two parts, each timed best of 3 on this machine:

1. Candidate embeddings: one batch of 58 crops of one image through the real DINOv2 ViT-S/14
   (``imgfocus_vits14``) at 224 px (crop cut + resize + forward, as :class:`CropEmbedder` runs
   them), giving seconds per candidate forward.
2. The outer loop: one epoch of ``AttentionAdapter``'s training on ``--subset`` images with
   random attention maps (16 x 16) and random 384-d candidate embeddings (the time does not
   depend on their values), at the default settings.

Both scale linearly in the number of images; the script prints the extrapolation to CelebA's
162,770 training images. These are extrapolations, not runs at full size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

CELEBA_TRAIN = 162_770
N_CANDIDATES = 58


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), max(times)


def candidate_forward_seconds():
    from sk_a2.crops import crop_resize
    from sk_a2.dps import candidate_bank
    from sk_a2.models import load_model

    vm = load_model("imgfocus_vits14", image_size=224, device="cpu")
    image = torch.rand(1, 3, 224, 224)
    boxes = torch.as_tensor(candidate_bank(224))[None]

    @torch.no_grad()
    def run():
        crops = crop_resize(image, boxes, 224)[0]
        vm.embed(vm.normalize(crops))

    run()
    best, worst = best_of(run)
    return best / N_CANDIDATES, worst / N_CANDIDATES, vm.embed_dim


def outer_epoch_seconds(n, d=384, grid=(16, 16)):
    from sk_a2.adapter import AttentionAdapter
    from sk_a2.dps import box_mass_matrix, candidate_bank

    rng = np.random.RandomState(0)
    G = grid[0] * grid[1]
    maps = rng.dirichlet(np.ones(G), size=n).astype(np.float32)
    codes = rng.randint(0, 2, n)
    idx = rng.permutation(n)
    n_val = int(0.3 * n)
    mass = box_mass_matrix(grid, 224, candidate_bank(224))
    adapter = AttentionAdapter(outer_epochs=1, device="cpu", random_state=0)

    def run():
        emb = rng.randn(n, N_CANDIDATES, d).astype(np.float32)
        start = time.perf_counter()
        adapter._train(maps, emb, codes, 2, idx[n_val:], idx[:n_val], mass, rng)
        return time.perf_counter() - start

    run()
    times = [run() for _ in range(3)]
    return min(times), max(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subset", type=int, default=2048)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    per_fwd, per_fwd_worst, d = candidate_forward_seconds()
    print(f"candidate forward (ViT-S/14, 224 px, {args.threads} thread(s)): "
          f"{per_fwd * 1e3:.1f} ms best of 3 (worst {per_fwd_worst * 1e3:.1f} ms)")
    n_fwd = CELEBA_TRAIN * N_CANDIDATES
    print(f"CelebA train: {n_fwd:,} candidate forwards -> {n_fwd * per_fwd / 3600:.1f} h "
          "(extrapolated)")
    print(f"stored candidate embeddings: {n_fwd * d * 4 / 2**30:.1f} GiB float32 (d={d})")
    best, worst = outer_epoch_seconds(args.subset, d)
    per_image = best / args.subset
    print(f"outer epoch on {args.subset} images: {best:.2f} s best of 3 (worst {worst:.2f} s)")
    print(f"CelebA train outer epoch: {per_image * CELEBA_TRAIN / 60:.1f} min (extrapolated)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
