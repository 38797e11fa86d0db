"""cnn: train, evaluate, compare and run convolutional image classifiers (JAX + Flax NNX).

The command line (`cnncli.cli`) is a thin layer over this library:
  data/        data set registry, readers of official formats, cache, splits, downloads
  models/      architecture registry (Flax NNX modules), the layers in measured forms, `summary`
  pretrained/  published weights: where each file comes from, reading it without running code
  runs/        a trained run: its directory, checkpoints, loading, inference
  train/       the training loop (prepare -> epochs -> finish), steps, optimizers, augmentation
  evaluate, predict, explain, export, serve, compare, bench, recipes, plots: one module each.
docs/architecture.md says what each layer may import and where to make the common changes.
"""

__version__ = "0.1.0"
