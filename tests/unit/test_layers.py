"""The package's layers, read from its source with ``ast``: generic layers never name a family, and
no import runs back up (module-level and function-level imports alike)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import edgekit

PACKAGE = Path(edgekit.__file__).resolve().parent
#: The layers that serve every family; only edgekit/families/registry.py names the families.
GENERIC = (
    "edgekit.train",
    "edgekit.export",
    "edgekit.runtime",
    "edgekit.profile",
    "edgekit.serve",
    "edgekit.compress",
    "edgekit.data",
)
#: The modules of edgekit/families that are not a family: the description and the registry.
FAMILY_INDEX = ("base", "registry")
#: What the device runtime must never import (host-only layers, or layers above it).
ABOVE_RUNTIME = (
    "edgekit.train",
    "edgekit.export",
    "edgekit.compress",
    "edgekit.families",
    "edgekit.profile",
    "edgekit.serve",
    "edgekit.cli",
    "edgekit.fit",
    "edgekit.check",
)
#: What compress (bank selection and compression, numpy) must not import.
ABOVE_COMPRESS = (
    "edgekit.train",
    "edgekit.export",
    "edgekit.families",
    "edgekit.profile",
    "edgekit.serve",
    "edgekit.cli",
    "edgekit.fit",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


@functools.lru_cache(maxsize=None)
def _packages() -> frozenset[str]:
    return frozenset(_module_name(path) for path in PACKAGE.rglob("__init__.py"))


def _imports(name: str, tree: ast.Module) -> set[str]:
    """Every module ``tree`` imports anywhere (``from a import b`` counts as a and as a.b)."""
    package = name if name in _packages() else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, layers: tuple[str, ...]) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


@functools.lru_cache(maxsize=None)
def _family_words() -> frozenset[str]:
    """Family names as module names: the family folders, the registered models and the recipes."""
    from edgekit.resources import data_dir

    words = {path.stem for path in data_dir("calibration").glob("*.toml")}
    words |= {path.parent.name for path in (PACKAGE / "families").glob("*/__init__.py")}
    try:
        from edgekit.families.registry import FAMILIES
    except ImportError:  # a tree without the registry: the folders and recipes still say it
        FAMILIES = {}
    return frozenset(words | {name.replace("-", "_") for name in FAMILIES})


def _is_family_module(module: str) -> bool:
    """A family's own module: edgekit.families.<name>[...] (not base or registry), or any edgekit
    module outside edgekit/families named after a family (edgekit.export.patchcore)."""
    parts = module.split(".")
    if parts[0] != "edgekit":
        return False
    if parts[:2] == ["edgekit", "families"]:
        return len(parts) > 2 and parts[2] not in FAMILY_INDEX
    return any(part in _family_words() for part in parts[1:])


def test_no_generic_layer_imports_a_family():
    offending = sorted(
        f"{name} imports {imported}"
        for name, tree in _modules().items()
        if _within(name, GENERIC)
        for imported in _imports(name, tree)
        if _is_family_module(imported)
    )
    assert offending == []


def test_a_family_module_lives_in_its_family_folder():
    assert [name for name in _modules() if _within(name, GENERIC) and _is_family_module(name)] == []


def test_only_the_registry_names_a_family():
    """Lazy "module:function" references count too, and so does a model name as a value ("patchcore")."""
    from edgekit.families.registry import FAMILIES

    offending = []
    for name, tree in _modules().items():
        if not _within(name, GENERIC):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in FAMILIES:
                    offending.append(f"{name}:{node.lineno} names model {node.value!r}")
                words = node.value.replace(":", " ").replace("`", " ").split()
                offending += [f"{name} names {word}" for word in words if _is_family_module(word)]
    assert offending == []


def test_the_runtime_imports_nothing_above_it():
    offending = sorted(
        f"{name} imports {imported}"
        for name, tree in _modules().items()
        if _within(name, ("edgekit.runtime",))
        for imported in _imports(name, tree)
        if _within(imported, ABOVE_RUNTIME)
    )
    assert offending == []


def test_compress_imports_no_host_layer_or_family_and_of_the_runtime_only_the_bank_codec():
    offending = sorted(
        f"{name} imports {imported}"
        for name, tree in _modules().items()
        if _within(name, ("edgekit.compress",))
        for imported in _imports(name, tree)
        if _within(imported, ABOVE_COMPRESS)
        or (_within(imported, ("edgekit.runtime",)) and not _within(imported, ("edgekit.runtime.bank",)))
    )
    assert offending == []


def test_the_registry_lists_every_family_folder_and_imports_no_family():
    from edgekit.families.registry import FAMILIES

    folders = {
        path.name for path in (PACKAGE / "families").iterdir() if path.is_dir() and (path / "__init__.py").is_file()
    }
    named = {family.trainer.split(":")[0].split(".")[2] for family in FAMILIES.values()}
    assert named == folders
    tree = _modules()["edgekit.families.registry"]
    assert not [imported for imported in _imports("edgekit.families.registry", tree) if _is_family_module(imported)]


def test_every_exported_family_registers_a_head_the_runtime_builds():
    from edgekit.families.registry import FAMILIES
    from edgekit.runtime.heads import HEADS

    exported = {name: family.head for name, family in FAMILIES.items() if family.export_parts}
    assert exported and all(kind in HEADS for kind in exported.values()), exported


def test_profile_reads_targets_and_bundles_but_imports_no_export_training_or_family():
    """Targets (edgekit/targets.py) are shared by export and profile; the sweep's variants
    (edgekit/variants.py) sit above both, as the CLI does."""
    offending = sorted(
        f"{name} imports {imported}"
        for name, tree in _modules().items()
        if _within(name, ("edgekit.profile",))
        for imported in _imports(name, tree)
        if _within(imported, ("edgekit.export", "edgekit.train", "edgekit.families"))
    )
    assert offending == []
