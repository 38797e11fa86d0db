"""`--precision fp32|bf16|auto`: which precision the products run in.

bf16 is mixed precision: convolutions and dense layers take bf16 operands and accumulate in fp32
(`models/ops._dot`); master weights, the loss, BatchNorm statistics and the optimizer stay fp32.
`auto` picks bf16 only where the CPU has bf16 arithmetic (AMX or AVX512_BF16, from its flags) and
the step measured here is faster in it: on an AMX Xeon a bf16 product with fp32 accumulation ran
at 440-730 GFLOP/s against 126-165 in fp32, while on an AVX2-only CPU bf16 is emulated and slower.
The measurement is the tuner's (cached per host, model, input and batch), its fallback fp32.
"""

from __future__ import annotations

from .errors import CnnError

NAMES = ("fp32", "bf16")  # what the products run in: the one list (train, bench, export take it)
CHOICES = NAMES + ("auto",)  # `cnn train --precision`


def bf16_capable(cpuinfo: str | None = None) -> str | None:
    """The CPU feature that makes bf16 fast ('amx_bf16' / 'avx512_bf16'), or None.

    Only the CPU backend is judged from flags; elsewhere (GPU, TPU) bf16 is native."""
    import jax

    if jax.default_backend() != "cpu":
        return jax.default_backend()
    from .host import bf16_arithmetic

    return bf16_arithmetic(cpuinfo)


def compute_dtype(precision: str):
    """The dtype products take their operands in: jnp.bfloat16 or jnp.float32."""
    import jax.numpy as jnp

    if precision not in NAMES:
        raise CnnError(f"precision {precision!r} is not resolved (fp32 or bf16)")
    return jnp.bfloat16 if precision == "bf16" else jnp.float32


def resolve(requested: str, key: tuple, candidates: dict, make_inputs, cpuinfo: str | None = None) -> tuple[str, str]:
    """(precision, why) for `requested`. For "auto", `candidates` maps "fp32"/"bf16" to the step
    function in that precision and `make_inputs()` gives its arguments; the faster one is kept."""
    from . import tuner  # here: `cnn --help` reads NAMES through checks.py and needs nothing else

    if requested not in CHOICES:
        raise CnnError(f"--precision must be one of {', '.join(CHOICES)}, not {requested!r}")
    if requested != "auto":
        return requested, "as asked"
    feature = bf16_capable(cpuinfo)
    if feature is None:
        return "fp32", "auto: this CPU reports no bf16 arithmetic (AMX or AVX512_BF16)"
    choice = tuner.choose("precision", key, {"fp32": candidates["fp32"], "bf16": candidates["bf16"]}, make_inputs)
    ms = tuner.record("precision", key).get("ms", {})
    if len(ms) == 2:
        ratio = ms["fp32"] / ms["bf16"] if ms.get("bf16") else 0
        return choice, f"auto: {feature}, measured step bf16 {ratio:.2f}x the speed of fp32"
    return choice, f"auto: {feature}, not measured here (fp32 unless measured)"
