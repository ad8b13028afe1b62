#!/usr/bin/env python
"""Generate the synthetic COCO-format instance-segmentation data set (train and val splits).

    python tools/make_synthetic_dataset.py --out datasets/my_synthetic --num-train 400 --num-val 50 \
        --size 128 --seed 0 --color-similarity 0.2

Then train on it with ``DATASETS.REGISTER "['my_train:datasets/my_synthetic/annotations/instances_train.json:
datasets/my_synthetic/train']"`` (and the same for val). The built-in ``synthetic_{train,val}`` names generate
the default set on first use without this script.
"""

import argparse
import logging
import os

from mask2former_sim.data.synthetic import SyntheticConfig, generate_synthetic_dataset


def main() -> None:
    default = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--num-train", type=int, default=default.num_train, help="training images")
    parser.add_argument("--num-val", type=int, default=default.num_val, help="validation images")
    parser.add_argument("--size", type=int, default=default.size, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=default.seed, help="seed (same seed, same bytes)")
    parser.add_argument(
        "--color-similarity",
        type=float,
        default=default.color_similarity,
        help="0 = object colours distinct from the background ... 1 = equal to its mean",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args()
    if not 0.0 <= args.color_similarity <= 1.0:
        parser.error(f"--color-similarity must be in [0, 1], got {args.color_similarity}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = SyntheticConfig(
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        seed=args.seed,
        color_similarity=args.color_similarity,
    )
    out = generate_synthetic_dataset(args.out, cfg, overwrite=args.overwrite)
    for split in ("train", "val"):
        logging.info(
            "%s: json %s, images %s",
            split,
            os.path.join(out, "annotations", f"instances_{split}.json"),
            os.path.join(out, split),
        )


if __name__ == "__main__":
    main()
