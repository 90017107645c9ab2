"""The package's floors (README "Layout"): every import of `aiaa_server` runs to the same floor or below."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aiaa_server"

# module path prefix -> floor; the longest matching prefix wins
FLOORS = {
    "app": 5, "cli": 5, "__main__": 5,
    "api": 4,
    "services": 3, "settings": 3, "logs": 3,
    "mmar": 2, "bundles": 2, "sessions": 2, "workspace": 2, "datastore": 2, "learning": 2,
    "inference": 1, "engines": 1, "imaging": 1,
    "mmar.config": 0, "errors": 0, "metrics": 0, "security": 0, "__init__": 0,
}
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn")


def floor_of(module: str) -> int:
    parts = module.split(".")[1:] or ["__init__"]
    for size in range(len(parts), 0, -1):
        prefix = ".".join(parts[:size])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise AssertionError(f"{module}: no floor assigned (add it to FLOORS and to the README's layout)")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(relative.parts).removesuffix(".__init__")


def imports_of(path: Path) -> list[str]:
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.append(node.module)
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_imports_run_downward_only() -> None:
    upward = [
        f"{module_name(path)} (floor {floor_of(module_name(path))}) -> {name}"
        for path in MODULES for name in imports_of(path)
        if name.startswith("aiaa_server.") and floor_of(name) > floor_of(module_name(path))
    ]
    assert upward == []


def test_below_the_routers_nothing_imports_the_web_framework() -> None:
    web = [f"{module_name(path)} -> {name}" for path in MODULES if floor_of(module_name(path)) <= 3
           for name in imports_of(path) if name.split(".")[0] in WEB_FRAMEWORKS]
    assert web == []


def test_the_core_never_reads_the_settings() -> None:
    readers = [module_name(path) for path in MODULES
               if floor_of(module_name(path)) <= 2 and "aiaa_server.settings" in imports_of(path)]
    assert readers == []


def test_the_server_package_holds_only_the_server() -> None:
    demo = [module_name(p) for p in MODULES if any(n.startswith("aiaa_demo") for n in imports_of(p))]
    assert demo == []


def test_modules_stay_small_or_say_why() -> None:
    large = {}
    for path in MODULES:
        text = path.read_text()
        if len(text.splitlines()) > 400 and "Longer than 400 lines because" not in (ast.get_docstring(ast.parse(text)) or ""):
            large[module_name(path)] = len(text.splitlines())
    assert large == {}


def test_floors_order_the_layers() -> None:
    assert floor_of("aiaa_server.settings") > floor_of("aiaa_server.engines.torchscript")
    assert floor_of("aiaa_server.mmar.config") < floor_of("aiaa_server.imaging.io") < floor_of("aiaa_server.mmar.loader")
