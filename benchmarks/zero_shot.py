"""Zero-shot cats vs dogs with the ImageNet network: no training, the summed probability of ImageNet's
dog classes (151-268) against its cat classes (281-285), on the shared test split.

    CNN_DATA_DIR=../shared/data python benchmarks/zero_shot.py [--limit N]

Each photo is fitted to 224x224 as `cnn predict --model imagenet` fits it (the spec's `fit`, a centre
crop; `--fit squash` for the data layer's whole-photo resize). Prints the accuracy, the images per
second of the forward pass and the machine (issue #44's check that the port is right: at least 90%).
"""

import argparse
import json
import time

import numpy as np

from cnncli import host, pretrained
from cnncli.data import decode_image
from cnncli.runs import pretrained_run

DOGS, CATS = range(151, 269), range(281, 286)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="images of the test split (default all)")
    ap.add_argument("--fit", choices=("crop", "squash"), default=None, help="default: the weights' own")
    args = ap.parse_args()
    spec = pretrained.get("efficientnet_lite0", "imagenet")
    root = host.data_root() / "cats_vs_dogs" / "test"
    classes = ["cat", "dog"]
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).glob("*.jpg"))][: args.limit]
    fit = args.fit or spec.fit
    x = np.stack([decode_image(f, spec.image_size, "RGB", fit) for f, _ in files])
    y = np.array([c for _, c in files])
    run = pretrained_run(spec)
    run.probabilities(x[:64], batch_size=64)  # compile and tune outside the timing
    t = time.perf_counter()
    p = run.probabilities(x, batch_size=64)
    seconds = time.perf_counter() - t
    dog = p[:, DOGS].sum(1) > p[:, CATS].sum(1)
    pred = np.where(dog, classes.index("dog"), classes.index("cat"))
    acc = float((pred == y).mean())
    print(json.dumps(dict(images=len(y), fit=fit, accuracy=round(acc, 4), correct=int((pred == y).sum()),
                          images_per_s=round(len(y) / seconds, 1), cpu=host.cpu())))


if __name__ == "__main__":
    main()
