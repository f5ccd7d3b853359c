"""Cost of an AttentionAdapter fit: per image on this machine, and extrapolated to CelebA size.

    OMP_NUM_THREADS=2 python benchmarks/adapter_cost.py [--threads 2] [--subset 2048]
        [--sizes 42 56 112 224]

Three parts, each timed best of 3:

1. Candidate embeddings: the 58 crops of one image through the real DINOv2 ViT-S/14
   (``imgfocus_vits14``) at each ``--sizes`` side (crop cut + resize + forward, as
   :class:`CropEmbedder` runs them, float32), giving seconds per training image. This is the
   one-off cost of a first ``fit``; refits with a cache run no model.
2. Attention maps: one 112 px and one 224 px image through the same model.
3. The outer loop: one epoch of ``AttentionAdapter``'s training at its defaults on ``--subset``
   images with random attention maps (16 x 16) and random 384-d candidate embeddings (the time
   does not depend on their values), whitening included.

All scale linearly in the number of images; the script prints the extrapolation to CelebA's
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


def candidate_seconds(size):
    """Seconds (best, worst of 3) to embed the 58 candidates of one 224 px image at ``size``."""
    from sk_a2._dps import candidate_bank
    from sk_a2.boxes import crop_resize
    from sk_a2.models import load_model

    vm = load_model("imgfocus_vits14", image_size=size, device="cpu")
    image = torch.rand(1, 3, size, size)
    boxes = torch.as_tensor(candidate_bank(224) * size / 224)[None]

    @torch.no_grad()
    def run():
        crops = crop_resize(image, boxes, size)[0]
        vm.embed(vm.normalize(crops))

    run()
    return best_of(run), vm.embed_dim


def attention_seconds(size):
    from sk_a2.models import load_model

    vm = load_model("imgfocus_vits14", image_size=size, device="cpu")
    image = torch.rand(1, 3, size, size)

    @torch.no_grad()
    def run():
        vm.embed(vm.normalize(image))  # one forward of the model, as the attention pass runs it

    run()
    return best_of(run)


def outer_epoch_seconds(n, d=384, grid=(16, 16)):
    from sk_a2._dps import box_mass_matrix, candidate_bank
    from sk_a2.adapter import AttentionAdapter, _OuterLoop

    rng = np.random.RandomState(0)
    G = grid[0] * grid[1]
    maps = rng.dirichlet(np.ones(G), size=n).astype(np.float32)
    codes = rng.randint(0, 2, n)
    mass = box_mass_matrix(grid, 224, candidate_bank(224))
    adapter = AttentionAdapter(outer_epochs=1, device="cpu", random_state=0)
    emb = rng.randn(n, N_CANDIDATES, d).astype(np.float32)

    def run():
        loop = _OuterLoop(adapter, maps, emb, codes, None, np.arange(n), np.arange(0), mass, rng)
        adapter._train(loop, None)

    run()
    return best_of(run)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subset", type=int, default=2048)
    parser.add_argument("--sizes", type=int, nargs="+", default=[42, 56, 112, 224])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), float32, DINOv2 ViT-S/14 (imgfocus_vits14)")
    for size in args.sizes:
        (best, worst), d = candidate_seconds(size)
        print(f"58 candidates at {size} px: {best:.3f} s per image best of 3 (worst {worst:.3f})"
              f"; CelebA train: {CELEBA_TRAIN * best / 3600:.1f} h (extrapolated)")
    for size in (112, 224):
        best, worst = attention_seconds(size)
        print(f"attention map at {size} px: {best * 1e3:.1f} ms per image "
              f"(worst {worst * 1e3:.1f})")
    print(f"stored candidate embeddings: {CELEBA_TRAIN * N_CANDIDATES * d * 4 / 2**30:.1f} GiB "
          f"float32 at CelebA size (d={d}), {CELEBA_TRAIN * N_CANDIDATES * 64 * 4 / 2**30:.1f} "
          "GiB once whitened to 64 components")
    best, worst = outer_epoch_seconds(args.subset, d)
    print(f"outer epoch on {args.subset} images: {best:.2f} s best of 3 (worst {worst:.2f} s)")
    print(f"CelebA train outer epoch: {best / args.subset * CELEBA_TRAIN / 60:.1f} min "
          "(extrapolated)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
