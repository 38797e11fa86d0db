"""Architectures: the registry, Flax NNX modules, summaries, parameter and FLOP counts.

    from cnncli.models import ARCHS, get_arch, create_model
    model = create_model("net1", (28, 28, 1), 10, seed=0)   # nnx.Module, train mode
    logits = model(x)                                        # x: float32 NHWC, normalised

The registry imports no JAX, so listing names is instant; the summary helpers (which do) load
on first use.
"""

from .registry import ACTIVATION_CHOICES, ARCHS, ArchSpec, abstract_model, create_model, get_arch

_SUMMARY = ("count_params", "flops_per_image", "macs_per_image", "param_bytes", "summarize")

__all__ = ["ACTIVATION_CHOICES", "ARCHS", "ArchSpec", "abstract_model", "create_model", "get_arch", *_SUMMARY]


def __getattr__(name):
    # PEP 562: pull in the JAX-based summary module only when one of its functions is asked for.
    if name in _SUMMARY:
        from . import summary

        return getattr(summary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
