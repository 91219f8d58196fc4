"""The launch file and the parameter file."""

import importlib.util
import logging

import pytest
import yaml

from conftest import REPO
from vpr_core.acceptance import AcceptanceConfig
from vpr_core.loop import LoopConfig
from vpr_core.sequence_filter import SequenceFilterConfig
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


@pytest.mark.parametrize("prefix, config_class", [("loop.", LoopConfig), ("localization.", AcceptanceConfig),
                                                  ("filter.", SequenceFilterConfig)])
def test_node_defaults_are_the_library_defaults(prefix, config_class):
    """The node, `vpr eval-loops` and the offline replay must decide alike when nobody sets anything."""
    defaults = config_class()
    specs = [s for s in SPECS if s.name.startswith(prefix)]
    assert specs
    for spec in specs:
        assert getattr(defaults, spec.name[len(prefix):]) == spec.default, spec.name


@pytest.fixture(scope="module", autouse=True)
def plain_loggers():
    """Importing `launch` makes every logger created afterwards in this process one that does not
    propagate (`launch.logging.reset` sets its logger class), which would hide the log records of any
    module first imported later from the other tests' `caplog`. The launch file is only evaluated here,
    never run, so the standard class goes back at once."""
    import launch  # noqa: F401

    logging.setLoggerClass(logging.Logger)


def _launch_module():
    spec = importlib.util.spec_from_file_location("localize_launch", REPO / "launch" / "localize.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nodes(module, **arguments):
    """The node actions the launch file makes from these arguments (the others at their defaults)."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    description = module.generate_launch_description()
    declared = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert set(declared) == set(module.ARGUMENTS)
    context = LaunchContext()
    for name, action in declared.items():
        if name != "params_file":  # its default is found in the installed package share
            context.launch_configurations[name] = "".join(s.perform(context) for s in action.default_value)
    context.launch_configurations.update(params_file=str(REPO / "config" / "localize.yaml"), **arguments)
    opaque = next(a for a in description.entities if isinstance(a, OpaqueFunction))
    return opaque.execute(context)


def _overrides(node) -> dict:
    from launch import LaunchContext
    from launch_ros.utilities import evaluate_parameters

    params_file, overrides = evaluate_parameters(LaunchContext(), node._Node__parameters)
    assert params_file == REPO / "config" / "localize.yaml"
    return overrides


def test_launch_file_builds_the_node_with_its_parameters():
    from launch_ros.actions import LifecycleNode

    module = _launch_module()
    (node,) = _nodes(module, map="/maps/office", mode="slam", slam_path="/maps/slam", odom_topic="odom",
                     image_topics="/a/image_raw, /b/image_raw/compressed", camera_info_topics="auto",
                     use_sim_time="True", namespace="robot1", qos="reliable", log_level="debug")
    assert node.node_package == "vpr_ros" and node.node_executable == "localize_node"
    assert not isinstance(node, LifecycleNode)
    overrides = _overrides(node)
    assert overrides["map.path"] == "/maps/office" and overrides["mode"] == "slam"
    assert overrides["map.slam_path"] == "/maps/slam" and overrides["odom_topic"] == "odom"
    assert overrides["image_topics"] == ("/a/image_raw", "/b/image_raw/compressed")
    assert overrides["camera_info_topics"] == ("auto",) and overrides["qos"] == "reliable"
    assert overrides["use_sim_time"] is True
    assert node._Node__ros_arguments[-2:] == ["--log-level", "debug"]
    (remapped,) = _nodes(module, pose_topic="/initialpose")
    assert [tuple("".join(x.perform(None) for x in side) for side in rule) for rule in remapped._Node__remappings] \
        == [("~/pose", "/initialpose")]
    assert _nodes(module)[0]._Node__remappings == []


@pytest.mark.parametrize("spelling, value", [("true", True), ("1", True), ("yes", True), ("On", True),
                                             ("False", False), ("0", False), ("no", False), ("off", False)])
def test_use_sim_time_takes_the_usual_spellings(spelling, value):
    (node,) = _nodes(_launch_module(), use_sim_time=spelling)
    assert _overrides(node)["use_sim_time"] is value


def test_defaults_start_the_plain_node_and_managed_the_lifecycle_one():
    from launch_ros.actions import LifecycleNode

    module = _launch_module()
    (plain,) = _nodes(module)
    assert _overrides(plain) == {"use_sim_time": False}  # nothing overrides the parameter file
    (managed,) = _nodes(module, managed="true", mode="slam")
    assert isinstance(managed, LifecycleNode) and managed.node_executable == "localize_lifecycle_node"
    untrained = _overrides(_nodes(module, preset="lite0")[0])
    assert untrained["model.preset"] == "lite0" and untrained["model.checkpoint"] == ""
    with pytest.raises(ValueError, match="use_sim_time:='maybe' is not a boolean"):
        _nodes(module, use_sim_time="maybe")
