"""Lint (ruff), types (mypy) and the import layering of the package, so that ``pytest`` covers them too.

Configuration in pyproject.toml: ruff rules E, F, W, I (isort), UP (pyupgrade) at 120 columns for Python 3.10;
mypy on the whole package with ``check_untyped_defs`` (untyped third-party packages are ``Any``).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "nnunet_blob"

#: what each part of the package may import of the package (besides itself and the package root's __version__).
#: Parts: sub-packages and top-level modules. ``demo`` may import anything; nothing but tests imports ``demo``.
ALLOWED = {
    "io": set(),
    "workers": set(),  # the one pool of worker processes
    "synthetic": set(),
    "_autoregister": {"io"},
    "cli": {"io"},  # sub-commands are found by name at run time (importlib), not imported
    "instances": {"io"},
    "losses": {"nnunet_internals"},
    "preprocessing": {"instances", "io", "nnunet_internals", "workers"},
    "evaluation": {"instances", "io", "nnunet_internals", "workers"},
    "nnunet_internals": {"io"},
    "trainers": {"losses", "instances", "preprocessing", "evaluation", "io", "nnunet_internals", "workers"},
    # a dotted entry allows one module of a part: decisions reads where the data is, not the instance maps
    "decisions": {"instances", "evaluation", "io", "nnunet_internals", "preprocessing.locate", "workers"},
    # border-core conversion reads label files as evaluation does and runs cases in the worker pool
    "border_core": {"instances", "evaluation", "io", "nnunet_internals", "workers"},
    "benchmark": {"io", "trainers", "preprocessing.locate", "preprocessing.errors"},
    "demo": {"io", "synthetic", "instances", "losses", "preprocessing", "evaluation", "trainers", "nnunet_internals",
             "decisions", "cli", "workers", "benchmark"},
}


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True)


def test_ruff():
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"


def test_mypy():
    result = run("mypy", "--no-incremental")
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"


def part_of(module: str) -> str:
    """``nnunet_blob.preprocessing.store`` -> ``preprocessing``; ``nnunet_blob`` -> ``""`` (the package root)."""
    names = module.split(".")
    return names[1] if len(names) > 1 else ""


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    names = list(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
    return ".".join(names)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the package in a file, lazy imports in functions included."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # ``from nnunet_blob import losses`` imports the sub-package
            found += [(node.lineno, f"{target}.{alias.name}" if target == "nnunet_blob" and alias.name != "__version__"
                       else target) for alias in node.names]
    return [(line, name) for line, name in found if name == "nnunet_blob" or name.startswith("nnunet_blob.")]


def allows_module(allowed: set[str], module: str) -> bool:
    """Whether a dotted entry of ``allowed`` (``preprocessing.locate``) names ``module`` or a package above it."""
    names = module.split(".")[1:]
    return any("." in entry and names[:len(entry.split("."))] == entry.split(".") for entry in allowed)


def layering_violations(root: Path = PACKAGE) -> list[str]:
    violations = []
    for path in sorted(root.rglob("*.py")):
        importer = part_of(module_name(path))
        if importer in ("", "__init__"):
            allowed: set[str] = set()
        elif importer not in ALLOWED:
            violations.append(f"{path.relative_to(ROOT)}: part {importer!r} has no layering rule; add it to ALLOWED "
                              f"in {Path(__file__).name}")
            continue
        else:
            allowed = ALLOWED[importer]
        for line, name in imports_of(path):
            target = part_of(name)
            if target in ("", importer) or target in allowed or allows_module(allowed, name):
                continue
            what = (f"{importer} may import only {', '.join(sorted(allowed))}" if allowed
                    else f"{importer} may import nothing of nnunet_blob")
            violations.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({what})")
    return violations


def test_imports_go_down_the_layers_only():
    violations = layering_violations()
    assert not violations, "imports against the package layering:\n" + "\n".join(violations)


@pytest.mark.parametrize("part,source,offence", [
    ("preprocessing", "from nnunet_blob.trainers.instance_sampling import InstanceLocations\n",
     "nnunet_blob.trainers.instance_sampling"),
    ("instances", "def f():\n    from nnunet_blob.preprocessing.errors import InstanceMapError\n",
     "nnunet_blob.preprocessing.errors"),
    ("trainers", "from nnunet_blob.demo import budgets\n", "nnunet_blob.demo"),
    ("losses", "from ..instances import detection\n", "nnunet_blob.instances"),
    ("evaluation", "import nnunet_blob.losses.blob\n", "nnunet_blob.losses.blob"),
    ("decisions", "from nnunet_blob.preprocessing.store import InstanceStore\n", "nnunet_blob.preprocessing.store"),
    ("decisions", "from nnunet_blob.trainers import variants\n", "nnunet_blob.trainers"),
])
def test_layering_check_names_the_offending_import(tmp_path, monkeypatch, part, source, offence):
    fake = tmp_path / "nnunet_blob" / part
    fake.mkdir(parents=True)
    (fake / "module.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    violations = layering_violations(tmp_path / "nnunet_blob")
    assert len(violations) == 1 and f"nnunet_blob/{part}/module.py" in violations[0], violations
    assert f"imports {offence} ({part} may import " in violations[0]
