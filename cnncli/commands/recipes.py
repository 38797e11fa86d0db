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
    rows = [[name, r["description"], r["expected"], r["machine"], " ".join(_flag(k, v) for k, v in r["options"].items())]
            for name, r in RECIPES.items()]
    o.table("recipes (every option can still be overridden on the command line)",
            ["recipe", "goal", "measured", "machine", "options"], rows, justify_numbers=False)
    on_test = [name for name, r in RECIPES.items() if r["chosen_on"].startswith("test")]
    if on_test:
        o.print(f"chosen on the test split (val_split 0, before choices moved to a validation split): {', '.join(on_test)}")
