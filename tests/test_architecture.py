"""The house's layering (docs/architecture.md), read from the source with `ast`: no import circle, no
layer importing one above it, and the machine's and precision's facts each defined in one module."""

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cnncli"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The cnncli modules `name` imports anywhere in its file (top level or inside functions)."""
    f = MODULES[name]
    package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rsplit(".", 1)[0]
            target = node.module if not node.level else base + ("." + node.module if node.module else "")
            # `from .pkg import mod` imports the module; `from .mod import name` the module itself.
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            while t not in MODULES and "." in t:
                t = t.rsplit(".", 1)[0]
            # A package's own __init__ runs before any of its modules: not an edge of the layering.
            if t in MODULES and t != name and t.startswith("cnncli.") and not name.startswith(t + "."):
                found.add(t)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def test_no_import_circle():
    seen, done = set(), set()

    def visit(m, path):
        if m in done:
            return
        assert m not in seen, "import circle: " + " -> ".join(path[path.index(m):] + [m])
        seen.add(m)
        for n in sorted(GRAPH[m]):
            visit(n, path + [m])
        done.add(m)

    for m in sorted(GRAPH):
        visit(m, [])


def _under(m: str, *packages: str) -> bool:
    return any(m == f"cnncli.{p}" or m.startswith(f"cnncli.{p}.") for p in packages)


def test_layers_import_only_downwards():
    """host/precision/kernels <- data <- models <- runs <- train <- the commands' modules <- commands/cli."""
    readers = ("bench", "evaluate", "export", "exported", "serve", "predict", "explain", "compare", "comparison",
               "reframe")
    for m, targets in GRAPH.items():
        for t in targets:
            where = f"{m} imports {t}"
            assert not _under(t, "commands", "cli") or _under(m, "commands", "cli"), where
            if _under(m, "data", "models", "kernels", "host", "precision", "tuner", "pretrained"):
                assert not _under(t, "runs", "train", *readers), where
            if _under(m, "runs"):
                assert not _under(t, "train", *readers), where
            if _under(m, "train"):
                assert not _under(t, *readers), where


def test_readers_of_a_run_never_import_training():
    """What reads a trained run goes through `cnncli.runs`: only what trains (train/, compare, the
    training benchmark) and the commands import `cnncli.train`."""
    trains = ("train", "commands", "cli", "compare", "bench")
    for m, targets in GRAPH.items():
        if not _under(m, *trains):
            assert not any(_under(t, "train") for t in targets), f"{m} imports {sorted(t for t in targets if _under(t, 'train'))}"


def test_machine_and_precision_facts_have_one_home():
    for m, f in MODULES.items():
        text = f.read_text()
        if m != "cnncli.host":
            assert "/proc/cpuinfo" not in text.replace('"/proc/cpuinfo" is parsed in host.py', ""), m
            assert not re.search(r"environ(\.get)?\(?\[?[\"']CNN_(CACHE|DATA)_DIR", text), m
        if m != "cnncli.precision":
            assert not re.search(r"\(\s*[\"']fp32[\"']\s*,\s*[\"']bf16[\"']", text), m
