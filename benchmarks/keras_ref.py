"""Keras 3 on TensorFlow (CPU, oneDNN) reference of cnn's net1/net2: `python benchmarks/keras_ref.py`.

Same layers, sizes and optimizer (Adam, lr 1e-3) as `cnn`. Keras runs its compiled `tf.function`
train/predict steps through `train_on_batch`/`predict_on_batch`; XLA is off (`jit_compile=False`)
so TensorFlow's own oneDNN kernels run, as Keras does on CPU unless told otherwise.
Prints JSON lines (see _common.py). Needs `pip install -e .[bench]`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # CPU build: skip the failing GPU probe and its log line

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, modes, parse_args, serve, time_steps  # noqa: E402


def build(arch: str, shape: tuple[int, int, int], num_classes: int) -> keras.Sequential:
    """net1: conv32, conv64, pool 2x2/1 same, dense 128, dense; net2: conv32, conv64/2, dense 128, dense."""
    layers = [keras.Input(shape), keras.layers.Conv2D(32, 3, padding="same", activation="relu")]
    if arch == "net1":
        layers += [keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
                   keras.layers.MaxPooling2D(2, strides=1, padding="same")]
    else:
        layers += [keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")]
    # The logits in float32, as Keras' mixed-precision guide has it (a no-op in fp32).
    layers += [keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
               keras.layers.Dense(num_classes, dtype="float32")]
    return keras.Sequential(layers)


def main() -> None:
    args = parse_args("keras")
    keras.utils.set_random_seed(0)
    if args.precision == "bf16":  # bf16 compute, fp32 variables: Keras' mixed precision
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build(args.arch, args.input_shape, args.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, *args.input_shape), dtype=np.float32)
    y = rng.integers(0, args.num_classes, args.batch_size).astype(np.int32)
    steps = {"train": lambda: model.train_on_batch(x, y), "infer": lambda: model.predict_on_batch(x)}
    version = f"keras {keras.__version__}"
    if args.serve:
        return serve("keras", version, steps[args.mode], args)
    for mode in modes(args):
        emit("keras", version, args, mode, time_steps(steps[mode], args))


if __name__ == "__main__":
    main()
