"""vpr_core must never import ROS (the node, the offline replay and the CLI share it without ROS), and
its own modules import each other in layers, without cycles."""

import ast
from collections import deque
from pathlib import Path

from conftest import REPO

ROS_MODULES = ("rclpy", "rcl_interfaces", "rosidl_runtime_py", "launch", "launch_ros", "vpr_ros",
               "ament_index_python", "message_filters", "cv_bridge", "tf2_ros")


def _is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_MODULES or top.endswith("_msgs") or top.endswith("_srvs")


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            yield str(node.args[0].value)


def test_vpr_core_imports_no_ros_package():
    files = sorted((REPO / "vpr_core").rglob("*.py"))
    assert files, "vpr_core has no Python files"
    offenders = [f"{f.relative_to(REPO)}: {m}" for f in files for m in _imports(f) if _is_ros(m)]
    assert not offenders, "vpr_core imports ROS:\n" + "\n".join(offenders)


def test_the_check_catches_a_ros_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom sensor_msgs.msg import Image\nimportlib.import_module('rclpy')\n")
    assert [m for m in _imports(bad) if _is_ros(m)] == ["sensor_msgs.msg", "rclpy"]


# Python libraries the ROS layer imports, by their rosdep key.
ROSDEP_KEYS = {"numpy": "python3-numpy", "scipy": "python3-scipy", "cv2": "python3-opencv", "yaml": "python3-yaml"}


def test_package_xml_lists_every_ros_package_the_code_imports():
    """rosdep installs what package.xml names: a ROS package the code imports and package.xml omits
    breaks the node on a robot whose workspace was set up with `rosdep install`."""
    import xml.etree.ElementTree as ET

    manifest = ET.parse(REPO / "package.xml").getroot()
    declared = {e.text for e in manifest if e.tag in ("depend", "exec_depend", "build_depend")}
    files = sorted((REPO / "vpr_ros").glob("*.py")) + sorted((REPO / "vpr_core").rglob("*.py")) \
        + [REPO / "launch" / "localize.launch.py"]
    needed = set()
    for f in files:
        for module in _imports(f):
            top = module.split(".")[0]
            if _is_ros(module) and top != "vpr_ros":
                needed.add(top)
            elif top in ROSDEP_KEYS:
                needed.add(ROSDEP_KEYS[top])
    assert "rclpy" in needed and "launch_ros" in needed  # the scan sees the node and the launch file
    assert not needed - declared, f"package.xml lacks {sorted(needed - declared)}"


# ---- the import graph between vpr_core's own modules ---------------------------------------------
# model/ and engine/ are libraries the map database, the CLI and its commands are built on, never the
# reverse: an encoder must be usable (exported, benchmarked, served) without a map or a command line.
LOWER_LAYERS = ("model", "engine")
UPPER_LAYERS = ("mapdb", "cli", "cli_options")


def _module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (the directory of ``package``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _known(name: str, modules: dict[str, Path]) -> str:
    """``name`` if it is a module, else its nearest enclosing module (``pkg.module.attribute``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], set[str]]:
    """Edges module -> modules of the same package it imports, anywhere in it (inside functions too),
    relative imports resolved and ``from pkg import name`` taken as the submodule ``name`` where
    there is one; and the command modules (those with a top-level ``configure_parser`` and ``run``)."""
    modules = _module_names(root, package)
    graph: dict[str, set[str]] = {}
    commands = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {_known(a.name, modules) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else _known(base, modules)
                            for a in node.names}
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
                targets.add(_known(str(node.args[0].value), modules))
        graph[name] = {t for t in targets if t and t != name}
        top_level = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if {"configure_parser", "run"} <= top_level:
            commands.add(name)
    return graph, commands


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (its modules in import order, the first repeated at the end) per strongly connected
    group of modules; empty when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_cycle_through(min(group), graph, group) for group in groups)


def _cycle_through(start: str, graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest import path from ``start`` back to itself inside its strongly connected ``group``."""
    paths = {start: [start]}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & group):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"{start} is in no cycle of {sorted(group)}")


def layering_violations(graph: dict[str, set[str]], commands: set[str], package: str) -> list[str]:
    """Imports from model/ or engine/ of the map database, the CLI or a command module."""

    def layer(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == package else ""

    return [f"{source} -> {target}" for source in sorted(graph) if layer(source) in LOWER_LAYERS
            for target in sorted(graph[source]) if layer(target) in UPPER_LAYERS or target in commands]


def test_vpr_core_has_no_import_cycle():
    graph, _ = import_graph(REPO / "vpr_core", "vpr_core")
    cycles = import_cycles(graph)
    assert not cycles, "import cycles in vpr_core:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_model_and_engine_import_neither_the_map_database_nor_the_cli():
    graph, commands = import_graph(REPO / "vpr_core", "vpr_core")
    assert "vpr_core.build_map" in commands and "vpr_core.engine.registry" in graph["vpr_core.engine"]
    bad = layering_violations(graph, commands, "vpr_core")
    assert not bad, "model/engine import an upper layer:\n" + "\n".join(bad)


def test_the_checks_catch_a_planted_cycle_and_a_planted_upward_import(tmp_path):
    root = tmp_path / "pkg"
    files = {
        "__init__.py": "",
        "cli.py": "def run(args): ...\n",
        "tool.py": "import argparse\ndef configure_parser(parser): ...\ndef run(args): ...\n",
        "model/__init__.py": "",
        "model/a.py": "def f():\n    from .b import g\n",
        "model/b.py": "from pkg.model import c\n",
        "model/c.py": "import pkg.model.a\n",
        "engine/__init__.py": "",
        "engine/d.py": "import pkg.cli\ndef f():\n    from pkg import tool\n    from ..mapdb.store import Store\n",
        "mapdb/__init__.py": "",
        "mapdb/store.py": "from pkg.model.a import f\nclass Store: ...\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph, commands = import_graph(root, "pkg")
    assert commands == {"pkg.tool"}
    assert import_cycles(graph) == [["pkg.model.a", "pkg.model.b", "pkg.model.c", "pkg.model.a"]]
    assert layering_violations(graph, commands, "pkg") == ["pkg.engine.d -> pkg.cli", "pkg.engine.d -> pkg.mapdb.store",
                                                           "pkg.engine.d -> pkg.tool"]
