"""The package's folders are its layers: a lower layer never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "custom" / "flap_sam"

# layer -> the flap_sam layers it must not import
FORBIDDEN = {
    "model": {"data", "training", "federated", "jobs", "cli", "benchmark", "datasets", "evaluation", "measurement"},
    "data": {"model", "training", "federated", "jobs", "cli", "benchmark", "measurement"},
    "training": {"federated", "jobs", "cli", "benchmark", "measurement"},
    "jobs": {"federated", "cli", "benchmark", "measurement"},
    # production components never reach the attack simulation (a kit's allow-list refuses it)
    "federated": {"cli", "benchmark", "measurement"},
    "measurement": {"cli", "benchmark", "jobs"},
    "benchmark": {"cli"},
    "datasets": {"federated", "jobs", "cli", "benchmark", "evaluation", "measurement"},
    "evaluation": {"federated", "jobs", "cli", "benchmark", "measurement"},
    "provisioning": {"data", "training", "federated", "jobs", "cli", "benchmark", "datasets", "evaluation", "measurement"},
}
LAYERS = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}  # subpackages (shipped_jobs/ is data)


def _imported_layers(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        for name in names:
            parts = name.split(".")
            if parts[0] == "flap_sam" and len(parts) > 1:
                layers.add(parts[1])
    return layers


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_no_higher_layer(layer):
    wrong = {
        f"{p.relative_to(PACKAGE)} imports flap_sam.{l}"
        for p in (PACKAGE / layer).rglob("*.py")
        for l in _imported_layers(p) & FORBIDDEN[layer]
    }
    assert not wrong, sorted(wrong)


def test_every_layer_has_its_rule():
    assert LAYERS - set(FORBIDDEN) == {"cli"}  # the top: it may import every layer


def test_the_packages_own_helpers_import_no_layer():
    """``flap_sam/*.py`` (atomic files, Markdown tables, run-folder names) sit below every layer."""
    wrong = {f"{p.name} imports flap_sam.{l}" for p in PACKAGE.glob("*.py") for l in _imported_layers(p) & LAYERS}
    assert not wrong, sorted(wrong)
