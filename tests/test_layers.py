"""The package's imports go one way: each module imports only from its own layer or lower ones
(the order README's Layout section states). Every import statement counts, at module level or
inside a function, relative or absolute."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "da3gs"

#: layer of each top-level unit of the package (README, "Layout"); lower imports nothing higher
LAYERS = {
    "_version": 0, "errors": 0,
    "geometry": 1,
    "types": 2,
    "nn": 3, "render": 3, "io": 3, "gaussians": 3,
    "models": 4,
    "data": 5, "losses": 5, "metrics": 5,
    "train": 6, "eval": 6,
    "apps": 7, "viewer": 7,
    "cli": 8, "ns_plugin": 8,
    "__init__": 9,  # the facade (load_model, Prediction, __version__): for users, not the package
}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "da3gs":
        return None
    return "__init__" if len(parts) == 1 else parts[1]


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(imported da3gs module, line) for every import statement of ``path``."""
    mod = _module_name(path, root)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "da3gs":  # `from da3gs import x`: x may be a subpackage
                out += [(f"da3gs.{a.name}" if (root / a.name).exists()
                         or (root / f"{a.name}.py").exists() else "da3gs", node.lineno)
                        for a in node.names]
            else:
                out.append((target, node.lineno))
    return out


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert units <= set(LAYERS), f"units without a layer: {sorted(units - set(LAYERS))}"


def violations(root: Path = ROOT) -> list[str]:
    """One line per import against the layer order in the package at ``root``."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        src = _unit(_module_name(path, root))
        for target, line in imports_of(path, root):
            dst = _unit(target)
            if dst is None or dst == src:
                continue
            if LAYERS[dst] > LAYERS[src]:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {src} (layer {LAYERS[src]}) "
                           f"imports {target} (layer {LAYERS[dst]})")
    return bad


def test_imports_go_one_way():
    bad = violations()
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_checker_sees_upward_imports(tmp_path):
    pkg = tmp_path / "da3gs"
    for sub in ("geometry", "train", "models"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "geometry" / "rays.py").write_text(
        "def f():\n    from da3gs.train.loop import train\n    from ..models import net\n")
    (pkg / "models" / "net.py").write_text("from da3gs import load_model\nimport da3gs.geometry\n")
    bad = violations(pkg)
    assert len(bad) == 3, bad
    assert "geometry (layer 1) imports da3gs.train.loop" in bad[0]
    assert "imports da3gs.models" in bad[1]
    assert "models (layer 4) imports da3gs (layer 9)" in bad[2]
