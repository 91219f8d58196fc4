"""Starts the vpr_localizer node: `ros2 launch vpr_ros localize.launch.py map:=/path/to/map`.

Arguments left empty keep the value of the parameter file (config/localize.yaml by default).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    "params_file": "Parameter YAML file of the node.",
    "map": "Map database directory (parameter map.path).",
    "checkpoint": "Head checkpoint directory (parameter model.checkpoint).",
    "backend": "Inference backend: auto, torch, onnxruntime or tensorrt (parameter model.backend).",
    "engine_cache_dir": "Cache of ONNX files and TensorRT engines (parameter model.engine_cache_dir).",
    "image_topics": "Comma-separated camera topics (parameter image_topics).",
    "mode": "localization, slam or both (parameter mode).",
    "namespace": "Namespace of the node.",
    "use_sim_time": "Use /clock (true when replaying a bag).",
}
# launch argument -> node parameter
OVERRIDES = {
    "map": "map.path",
    "checkpoint": "model.checkpoint",
    "backend": "model.backend",
    "engine_cache_dir": "model.engine_cache_dir",
    "mode": "mode",
}


def _node(context, *_):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    overrides = {param: value[arg] for arg, param in OVERRIDES.items() if value[arg]}
    if value["image_topics"]:
        overrides["image_topics"] = [t.strip() for t in value["image_topics"].split(",") if t.strip()]
    overrides["use_sim_time"] = value["use_sim_time"].lower() == "true"
    return [Node(
        package="vpr_ros",
        executable="localize_node",
        name="vpr_localizer",
        namespace=value["namespace"],
        parameters=[value["params_file"], overrides],
        output="screen",
    )]


def generate_launch_description() -> LaunchDescription:
    defaults = {name: "" for name in ARGUMENTS}
    defaults["params_file"] = [FindPackageShare("vpr_ros"), "/config/localize.yaml"]
    defaults["use_sim_time"] = "false"
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=defaults[name], description=text)
         for name, text in ARGUMENTS.items()]
        + [OpaqueFunction(function=_node)])
