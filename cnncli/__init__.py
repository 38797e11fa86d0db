"""cnn: train, evaluate, compare and run convolutional image classifiers (JAX + Flax NNX).

The command line (`cnncli.cli`) is a thin layer over this library:
  data/      data set registry, readers of official formats, cache, splits, downloads
  models/    architecture registry (Flax NNX modules), fast layers, `summary`
  train/     the training engine, optimizers, augmentation, checkpoints, run directories
  evaluate, predict, explain, compare, bench, recipes, plots: one module each.
"""

__version__ = "0.1.0"
