"""What an option may hold: one rule per option, checked before any work, by the CLI and the library alike.

A rule is a `Range` or a `Choice` (or a comma list of choices). `rule.check(flag, value)` raises
`CnnError("--lr must be > 0, not -1")`; the CLI turns the same rule into its option's callback, so
a bad value is a usage error (exit 2) naming the option, and `rule.describe()` goes into `--help`.
Nothing here imports more than the standard library: the CLI builds its options from these at import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import CnnError
from .formats import NAMES as FORMAT_NAMES
from .precision import NAMES


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class Rule:
    """What every rule offers: `describe()` for `--help`, `problem(value)` (None when fine) and `check`."""

    def describe(self) -> str:
        raise NotImplementedError

    def problem(self, value) -> str | None:
        raise NotImplementedError

    def check(self, flag: str, value):
        if value is not None and (msg := self.problem(value)):
            raise CnnError(f"{flag} {msg}")
        return value


@dataclass(frozen=True)
class Range(Rule):
    """A number between `lo` and `hi` (either may be None); `lo_open`/`hi_open` exclude the bound itself."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    hint: Callable[[float], str | None] | None = None  # a guess at what was meant, for the message
    why: str = ""  # said after the range, in parentheses
    msg: str = ""  # said instead of "must be in ..." (kept where a message was already known to users)

    def describe(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(lo)}, {_num(hi)}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"> {_num(lo)}" if self.lo_open else f">= {_num(lo)}"
        if hi is not None:
            return f"< {_num(hi)}" if self.hi_open else f"<= {_num(hi)}"
        return "a number"

    def problem(self, value) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):  # nan and inf pass every comparison test
            return f"must be a finite number {self.describe()}, not {value}"
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if below or above:
            if self.msg:
                return self.msg
            guess = self.hint(value) if self.hint else None
            return (f"must be {self.describe()}, not {_num(value)}" + (f" ({self.why})" if self.why else "")
                    + (f" (did you mean {guess}?)" if guess else ""))
        return None


@dataclass(frozen=True)
class Integer(Rule):
    """Any whole number, of any sign and size (a seed: `seed_value` below maps it to what the engine takes)."""

    def describe(self) -> str:
        return "any integer"

    def problem(self, value) -> str | None:
        # A config.json may hold 1.5, "3" or true where the command line only lets integers through.
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, not {value!r}"


@dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed list of names (from a registry: architectures, optimizers, ...)."""

    values: tuple[str, ...]
    also: str = ""  # what else is accepted, e.g. "an image folder" (checked by `other`)
    other: Callable[[str], bool] | None = None

    def describe(self) -> str:
        return "one of " + ", ".join(self.values) + (f" or {self.also}" if self.also else "")

    def problem(self, value) -> str | None:
        if value in self.values or (self.other is not None and self.other(value)):
            return None
        return f"must be {self.describe()}, not {value!r}"


@dataclass(frozen=True)
class ChoiceList(Choice):
    """A comma list of names from a fixed list ("train,infer"); empty only when `empty` says so."""

    empty: bool = False

    def describe(self) -> str:
        return "a comma list of " + ", ".join(self.values) + (f" or {self.also}" if self.also else "")

    def problem(self, value) -> str | None:
        items = split_list(value)
        bad = [v for v in items if v not in self.values and not (self.other is not None and self.other(v))]
        if bad or (not items and not self.empty):
            return f"must be {self.describe()}, not {value!r}"
        return None


@dataclass(frozen=True)
class Folder(Rule):
    """An existing directory (a data dir, a run directory)."""

    def describe(self) -> str:
        return "an existing folder"

    def problem(self, value) -> str | None:
        from pathlib import Path

        return None if Path(value).expanduser().is_dir() else f"must be an existing folder, not {str(value)!r}"


def split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _percent(value: float) -> str | None:
    # 95 typed for 0.95; 1.5 is no percentage anyone means
    return f"{value / 100:g}" if 5 <= value <= 100 else None


# A list whose natural home (predict.py) imports NumPy: the CLI needs it at import, and `cnn --help`
# must not pay ~0.2 s for NumPy.
INVERT_CHOICES = ("auto", "yes", "no")  # digit photos: turn dark-on-light into light-on-dark?
EXPORT_FORMATS = FORMAT_NAMES  # formats.py's table
EXPORT_PRECISIONS = NAMES  # what an exported graph computes in (export.py)

# The rules several options share.
POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1, hint=_percent)  # accuracy, shares: 0.95, not 95
FRACTION_BELOW_1 = Range(0, 1, hi_open=True, hint=_percent)
SEED = Integer()  # -1 and 2**70 alike: users type whatever seed they like


def choice(values: Iterable[str], **kw) -> Choice:
    return Choice(tuple(values), **kw)


def check_name(name: str) -> None:
    """A run name is one folder name: `--name a/b` or `../x` would write outside --out."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise CnnError(f"--name must be a single folder name (no '/', no '..'), not {name!r}")


def check_out(out: str) -> None:
    """--out holds run directories: a file there is a mistake to say before any work, not after."""
    if Path(out).exists() and not Path(out).is_dir():
        raise CnnError(f"--out {out} is a file; --out names the folder that holds run directories")


# Seeds inside [0, SEED_SPAN) are used as typed (every recorded result keeps its weights); the code
# adds offsets of up to ~2**17 to them and JAX keys take 32-bit integers, so any other integer a
# user types (-1, 2**70) is hashed into that span.
SEED_SPAN = 2**31 - 2**20


def seed_value(seed: int) -> int:
    """The seed the engine computes with for the seed a user typed (any integer)."""
    seed = int(seed)
    if 0 <= seed < SEED_SPAN:
        return seed
    import hashlib

    return int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "little") % SEED_SPAN


def check_tta_shift(shift: int, shape) -> None:
    """--tta-shift must leave every shifted view inside an HxW image: 2 x shift < the shorter side."""
    side = min(shape[:2])
    if shift and 2 * shift >= side:
        raise CnnError(f"--tta-shift {shift} is too large for {shape[0]}x{shape[1]} images "
                       f"(at most {(side - 1) // 2} px)")


def scale_list(spec: str | None) -> tuple[float, ...]:
    """--tta-scales as numbers: a comma list of shares of the side, each in [0.25, 2] and not 1."""
    out = []
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        try:
            v = float(part)
        except ValueError:
            v = -1.0
        if not (0.25 <= v <= 2.0) or v == 1.0:
            raise CnnError(f"--tta-scales takes shares of the side in [0.25, 2] other than 1 "
                           f"(0.8: the central 80% enlarged; 1.25: the image shrunk in a border), not {part.strip()!r}")
        out.append(v)
    return tuple(out)
