"""The `cnn` commands, one small module per group: each parses its options, calls the library and prints.

`options` defines the options several commands share, once; `cnncli.cli` assembles the app.
Heavy libraries (JAX, Flax, TFDS, matplotlib) are imported inside the command functions so that
`cnn --help` answers at once.
"""
