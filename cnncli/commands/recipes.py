"""`cnn recipes`: the named option sets of `cnn train --recipe`, with what they measured."""

from __future__ import annotations

from .options import Json


def _flag(key: str, value) -> str:
    """An option as typed: switches are --name / --no-name, not "--name True"."""
    name = key.replace("_", "-")
    return (f"--{name}" if value else f"--no-{name}") if isinstance(value, bool) else f"--{name} {value}"


def recipes(json: Json = False):
    """List the named recipes (`cnn train --recipe NAME`) with their measured accuracy and time."""
    from ..console import Out
    from ..recipes import RECIPES

    o = Out(json=json)
    if json:
        o.emit_json({"recipes": RECIPES})  # a key of its own: the version is not a recipe
        return
    # One block per recipe, not a table: each field is a sentence, and five of them side by side made
    # lines of ~1,000 characters that no terminal or README could show.
    o.print("recipes (every option can still be overridden on the command line)")
    for name, r in RECIPES.items():
        o.print(name, style="bold", markup=False)
        for label, text in (("goal", r["description"]), ("measured", r["expected"]), ("machine", r["machine"]),
                            ("chosen on", r["chosen_on"]),
                            ("options", " ".join(_flag(k, v) for k, v in r["options"].items()))):
            o.print(f"  {label:<10} {text}", markup=False)
