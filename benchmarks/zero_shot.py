"""Zero-shot cats vs dogs with the ImageNet network: no training, the summed probability of ImageNet's
dog classes (151-268) against its cat classes (281-285), on the shared test split.

    CNN_DATA_DIR=../shared/data python benchmarks/zero_shot.py [--limit N]

Prints the accuracy, the images per second of the forward pass and the machine (issue #44's check
that the port is right: at least 90%).
"""

import argparse
import json
import time

import numpy as np

from cnncli import host, pretrained
from cnncli.data import load_dataset
from cnncli.train.rundir import pretrained_run

DOGS, CATS = range(151, 269), range(281, 286)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="images of the test split (default all)")
    args = ap.parse_args()
    spec = pretrained.get("efficientnet_lite0", "imagenet")
    ds = load_dataset("cats_vs_dogs", image_size=spec.image_size, limit=args.limit)
    x, y = ds.test.x, ds.test.y
    run = pretrained_run(spec)
    run.probabilities(x[:64], batch_size=64)  # compile and tune outside the timing
    t = time.perf_counter()
    p = run.probabilities(x, batch_size=64)
    seconds = time.perf_counter() - t
    dog = p[:, DOGS].sum(1) > p[:, CATS].sum(1)
    classes = ds.classes
    pred = np.where(dog, classes.index("dog"), classes.index("cat"))
    acc = float((pred == y).mean())
    print(json.dumps(dict(images=len(y), accuracy=round(acc, 4), correct=int((pred == y).sum()),
                          images_per_s=round(len(y) / seconds, 1), cpu=host.cpu())))


if __name__ == "__main__":
    main()
