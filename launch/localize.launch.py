"""Starts the vpr_localizer node: `ros2 launch vpr_ros localize.launch.py map:=/path/to/map`.

Arguments left empty keep the value of the parameter file (config/localize.yaml by default).
`managed:=true` starts the lifecycle variant, to be driven by `ros2 lifecycle` or Nav2's lifecycle
manager. The default topics are relative, so `namespace:=robot1` moves them all.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from vpr_core.choices import BACKEND_CHOICES, MODES, spoken

ARGUMENTS = {
    "params_file": "Parameter YAML file of the node.",
    "map": "Prebuilt map: a directory or a Milvus URI, milvus://HOST:PORT/COLLECTION (parameter map.path).",
    "slam_path": "Directory of the slam map in slam and both modes (parameter map.slam_path).",
    "checkpoint": "Head checkpoint directory (parameter model.checkpoint).",
    "preset": "Model preset with its untrained heads (parameter model.preset; model.checkpoint becomes '' "
              "unless checkpoint is given too).",
    "backend": f"Inference backend: {spoken(BACKEND_CHOICES)} (parameter model.backend).",
    "engine_cache_dir": "Cache of ONNX files and TensorRT engines (parameter model.engine_cache_dir).",
    "image_topics": "Comma-separated camera topics (parameter image_topics).",
    "camera_info_topics": "auto, none, or comma-separated CameraInfo topics, one per camera "
                          "(parameter camera_info_topics).",
    "odom_topic": "nav_msgs/Odometry topic for slam keyframe poses (parameter odom_topic).",
    "pose_topic": "Where ~/pose is published instead, e.g. /initialpose for AMCL or slam_toolbox (a remapping).",
    "mode": f"{spoken(MODES)} (parameter mode).",
    "qos": "Reliability of the camera subscriptions: auto, sensor_data or reliable (parameter qos).",
    "namespace": "Namespace of the node (and of its relative input topics).",
    "use_sim_time": "Use /clock (true when replaying a bag): true/false, 1/0, yes/no, on/off.",
    "log_level": "Log level of the node: debug, info, warn, error or fatal.",
    "managed": "true starts the lifecycle (managed) node, which waits for configure/activate.",
}
# launch argument -> node parameter, passed on when not empty
STRING_OVERRIDES = {
    "map": "map.path",
    "slam_path": "map.slam_path",
    "checkpoint": "model.checkpoint",
    "backend": "model.backend",
    "engine_cache_dir": "model.engine_cache_dir",
    "odom_topic": "odom_topic",
    "mode": "mode",
    "qos": "qos",
}
LIST_OVERRIDES = {"image_topics": "image_topics", "camera_info_topics": "camera_info_topics"}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def boolean(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in TRUE + FALSE:
        raise ValueError(f"launch argument {name}:={text!r} is not a boolean; use one of {', '.join(TRUE + FALSE)}")
    return value in TRUE


def _node(context, *_):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    overrides = {param: value[arg] for arg, param in STRING_OVERRIDES.items() if value[arg]}
    for arg, param in LIST_OVERRIDES.items():
        if value[arg]:
            overrides[param] = [t.strip() for t in value[arg].split(",") if t.strip()]
    if value["preset"]:
        overrides["model.preset"] = value["preset"]
        overrides.setdefault("model.checkpoint", "")
    overrides["use_sim_time"] = boolean("use_sim_time", value["use_sim_time"])
    managed = boolean("managed", value["managed"])
    remappings = [("~/pose", value["pose_topic"])] if value["pose_topic"] else []
    common = dict(package="vpr_ros", name="vpr_localizer", namespace=value["namespace"],
                  parameters=[value["params_file"], overrides], remappings=remappings, output="screen",
                  ros_arguments=["--log-level", value["log_level"]])
    if managed:
        return [LifecycleNode(executable="localize_lifecycle_node", **common)]
    return [Node(executable="localize_node", **common)]


def generate_launch_description() -> LaunchDescription:
    defaults = {name: "" for name in ARGUMENTS}
    defaults.update(params_file=[FindPackageShare("vpr_ros"), "/config/localize.yaml"], use_sim_time="false",
                    log_level="info", managed="false")
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=defaults[name], description=text)
         for name, text in ARGUMENTS.items()]
        + [OpaqueFunction(function=_node)])
