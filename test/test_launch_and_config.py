"""The launch file and the parameter file."""

import importlib.util

import pytest
import yaml

from conftest import REPO
from vpr_core.localizer import LocalizationConfig
from vpr_core.loop import LoopConfig
from vpr_ros.parameters import SPECS


def _yaml_parameters() -> dict:
    doc = yaml.safe_load((REPO / "config" / "localize.yaml").read_text())
    return doc["/**/vpr_localizer"]["ros__parameters"]


def test_yaml_lists_every_parameter_with_its_default_and_a_comment():
    values = _yaml_parameters()
    assert list(values) == [s.name for s in SPECS]
    assert values == {s.name: s.default for s in SPECS}
    lines = (REPO / "config" / "localize.yaml").read_text().splitlines()
    for spec in SPECS:
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{spec.name}:"))
        assert lines[i - 1].strip().startswith("#"), f"{spec.name} has no comment above it"


@pytest.mark.parametrize("prefix, config_class", [("loop.", LoopConfig), ("localization.", LocalizationConfig)])
def test_node_defaults_are_the_library_defaults(prefix, config_class):
    """The node, `vpr eval-loops` and the offline replay must decide alike when nobody sets anything."""
    defaults = config_class()
    specs = [s for s in SPECS if s.name.startswith(prefix)]
    assert specs
    for spec in specs:
        assert getattr(defaults, spec.name[len(prefix):]) == spec.default, spec.name


def test_launch_file_builds_the_node_with_its_parameters():
    if importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch_ros is not installable from PyPI here; the node itself is tested directly")
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location("localize_launch", REPO / "launch" / "localize.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert declared == set(module.ARGUMENTS)
    context = LaunchContext()
    context.launch_configurations.update({name: "" for name in module.ARGUMENTS})
    context.launch_configurations.update(
        params_file=str(REPO / "config" / "localize.yaml"), map="/maps/office", mode="slam",
        image_topics="/a/image_raw, /b/image_raw/compressed", use_sim_time="true", namespace="robot1")
    opaque = next(a for a in description.entities if isinstance(a, OpaqueFunction))
    (node,) = opaque.execute(context)
    assert node.node_package == "vpr_ros" and node.node_executable == "localize_node"
    overrides = node._Node__parameters[1]
    assert overrides["map.path"] == "/maps/office" and overrides["mode"] == "slam"
    assert overrides["image_topics"] == ["/a/image_raw", "/b/image_raw/compressed"]
    assert overrides["use_sim_time"] is True
