"""The localizer node's parameters: one table with type, default, description and validation.

Isaac ROS style: every parameter is declared up front with a descriptor, and the whole set is
validated before anything (model, map, subscriptions) is started, so a bad value fails fast with a
message that names the parameter and says what to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidTopicNameException
from rclpy.node import Node
from rclpy.validate_topic_name import validate_topic_name

# The names and numeric rules are shared with the `vpr` command's options (vpr_core never imports ROS).
from vpr_core.choices import BACKEND_CHOICES, GEOMETRIC_METHODS, INT8_BACKEND_CHOICES, MODES, PRECISIONS, spoken
from vpr_core.options import COSINE, COUNT, NON_NEGATIVE, THREADS, at_least, between, one_of

QOS_PROFILES = ("auto", "sensor_data", "reliable")


class ParameterError(ValueError):
    """A parameter value that the node refuses to start with."""


def _topic_problem(topic: str) -> str | None:
    try:
        validate_topic_name(topic)
    except InvalidTopicNameException as exc:
        return f"has an invalid topic name {topic!r} ({str(exc).splitlines()[0]})"
    return None


def _topics(v: list[str]) -> str | None:
    if not v or any(not t or not isinstance(t, str) for t in v):
        return "must list at least one non-empty topic name"
    if len(set(v)) != len(v):
        return "lists a topic twice"
    return next(filter(None, map(_topic_problem, v)), None)


def _topic_or_empty(v: str) -> str | None:
    return None if v == "" else _topic_problem(v)


def _none_or_topics(v: list[str]) -> str | None:
    if v == ["none"]:
        return None
    return next(filter(None, (_topic_problem(t) for t in v if t)), None)


def _auto_none_or_topics(v: list[str]) -> str | None:
    return None if v == ["auto"] else _none_or_topics(v)


def _intrinsics(v: list[float]) -> str | None:
    if len(v) != 4 or not all(math.isfinite(x) for x in v):
        return "must be 4 finite numbers fx, fy, cx, cy (all zeros: from CameraInfo)"
    if any(v) and (v[0] <= 0 or v[1] <= 0):
        return "must have fx > 0 and fy > 0 (or be all zeros: from CameraInfo)"
    return None


def _pose7(v: list[float]) -> str | None:
    if len(v) != 7 or not all(math.isfinite(x) for x in v):
        return "must be 7 finite numbers x y z qx qy qz qw"
    if math.sqrt(sum(q * q for q in v[3:])) < 1e-6:
        return "has a zero quaternion; the identity is [0, 0, 0, 0, 0, 0, 1]"
    return None


def _frame_name(v: str) -> str | None:
    if not v or v.startswith("/") or any(c.isspace() for c in v):
        return "must be a tf frame name: not empty, no leading '/', no spaces"
    return None


def _frame_name_or_empty(v: str) -> str | None:
    return None if v == "" else _frame_name(v)


@dataclass(frozen=True)
class Spec:
    """One parameter. ``dynamic`` ones can be changed at run time (``ros2 param set``), through the
    same checks; the others are declared read-only."""

    name: str
    default: Any
    description: str
    check: Callable[[Any], str | None] | None = None
    dynamic: bool = False


_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ARRAY_TYPES = {str: ParameterType.PARAMETER_STRING_ARRAY, float: ParameterType.PARAMETER_DOUBLE_ARRAY}


def _kind(default: Any) -> int:
    return _ARRAY_TYPES[type(default[0])] if isinstance(default, list) else _TYPES[type(default)]


SPECS: tuple[Spec, ...] = (
    Spec("image_topics", ["camera/image_raw"],
         "Camera topics to localize. A name ending in /compressed is read as sensor_msgs/CompressedImage, "
         "any other as sensor_msgs/Image. Relative names resolve in the node's namespace.", _topics),
    Spec("camera_info_topics", ["auto"],
         "sensor_msgs/CameraInfo per camera, for the geometric verification's relative poses: 'auto' = the "
         "sibling camera_info of each image topic (camera/image_raw -> camera/camera_info), 'none' = no "
         "CameraInfo, or one topic per image topic ('' for a camera without).", _auto_none_or_topics),
    Spec("camera.intrinsics", [0.0, 0.0, 0.0, 0.0],
         "Fixed pinhole intrinsics fx, fy, cx, cy (pixels of the published images, no distortion) for every "
         "camera; all zeros = from CameraInfo.", _intrinsics),
    Spec("depth_topics", ["none"],
         "Depth images registered to each camera's images (sensor_msgs/Image 16UC1 millimetres or 32FC1 "
         "metres, same size and intrinsics): 'none', or one topic per image topic ('' for a camera without). "
         "With depth, slam-mode loop closures carry METRIC transforms.", _none_or_topics),
    Spec("depth.max_time_diff_s", 0.05, "Largest stamp difference between an image and the depth image used "
         "with it.", between(0.0, 10.0)),
    Spec("qos", "auto",
         "Reliability of the image, CameraInfo and depth subscriptions. auto: reliable, unless a publisher of "
         "the topic offers only best effort (a reliable reader cannot match it); sensor_data: best effort "
         "(loses most VGA and larger frames in DDS on this kind of machine, README 'Frames lost before the "
         "node'); reliable: reliable (receives nothing from a best-effort publisher).", one_of(QOS_PROFILES)),
    Spec("qos_depth", 5, "History depth of the image subscriptions.", at_least(1)),
    Spec("max_rate_hz", 0.0, "Per-camera frame-rate limit; 0 processes every frame the worker can take.",
         at_least(0.0), dynamic=True),
    Spec("mode", "localization",
         "localization: match against the prebuilt map (read-only). slam: build a map of keyframes and "
         "detect loop closures. both: do both.", one_of(MODES)),
    Spec("model.preset", "lite0", "Model preset used when model.checkpoint is empty."),
    Spec("model.checkpoint", "checkpoints/lite0-fused",
         "Head checkpoint directory (safetensors + JSON); empty uses model.preset. A relative path is looked "
         "up in the working directory, then the installed package share and the source tree. The default "
         "fuses frozen Lite0 GeM with the Nordland-trained heads; checkpoints/lite0-nordland alone suits "
         "routes driven again along the same track."),
    Spec("model.backbone_weights", "",
         "Local path of the backbone weights; empty uses the weights shipped with the preset's package."),
    Spec("model.backend", "auto", f"Inference backend: {spoken(BACKEND_CHOICES)}.", one_of(BACKEND_CHOICES)),
    Spec("model.engine_cache_dir", "", "Where exported ONNX files and TensorRT engines are cached; "
         "empty uses ~/.cache/vpr_ros."),
    Spec("model.max_batch", 4, "Largest batch of camera frames encoded at once.", COUNT),
    Spec("model.threads", 0, "CPU threads of the inference backend; 0 lets it choose.", THREADS),
    Spec("model.precision", "fp32",
         "fp32; int8: the graph statically quantized for ONNX Runtime on the CPU, calibrated on model.calibration "
         "(its own encoder: maps built with `vpr build-map --precision int8` and the same calibration); fp16 or "
         "bf16 on a GPU.", one_of(PRECISIONS)),
    Spec("model.calibration", "",
         "int8 only: calibration frame sources separated by ';' (folders of images, rosbag:run1.mcap, ...): the "
         "frames the map was built from (and of every other place or season the robot works in)."),
    Spec("model.calibration_frames", 32, "int8 only: calibration frames spread evenly over the sources, equal shares.",
         COUNT),
    Spec("model.allow_batch_dependent", False,
         "Allow a model whose descriptor depends on the other images of the batch (SAGE InteractHead). "
         "Per-frame results then depend on which frames arrive together."),
    Spec("model.local_branch", "",
         "FoL++ local branch checkpoint directory (e.g. checkpoints/lite0-nordland-local); non-empty adds local "
         "re-ranking of the best matches against the patches stored in the map (add them with `vpr add-local`). "
         "Empty: binary + float search only."),
    Spec("map.path", "",
         "Prebuilt map (required in localization and both modes): a map directory, or a Milvus collection, "
         "milvus://HOST:PORT/COLLECTION (a server shared by a fleet) or milvus-lite:FILE.db/COLLECTION."),
    Spec("map.slam_path", "",
         "Directory of the slam map (slam and both modes). Every keyframe is committed to it when it is "
         "added; a slam map already there is continued at start (new session, ids after its last keyframe; "
         "see slam.fresh_start), and renamed to <path>.<time> at ~/reset. Empty keeps the keyframes in a "
         "temporary directory removed at exit (~/save_map then refuses)."),
    Spec("slam.fresh_start", False,
         "At start, rename a slam map found at map.slam_path to <path>.<time> (never overwritten) and begin "
         "an empty one, instead of continuing it."),
    Spec("search.top_k", 5, "Matches published per query.", COUNT, dynamic=True),
    Spec("search.rerank_k", 100, "Largest pool of binary-code candidates re-ranked by float descriptors.",
         at_least(1)),
    Spec("search.adaptive", True, "Size the re-rank pool per query from the Hamming distance distribution."),
    Spec("search.threads", 1, "Threads of the map search.", at_least(1)),
    Spec("search.local_margin", 0.02, "Local stage: matches within this cosine of the best are re-ranked.",
         between(0.0, 2.0)),
    Spec("search.local_max_candidates", 20, "Local stage: most matches re-ranked per query.", at_least(1)),
    Spec("search.local_weight", 0.5, "Local stage: weight of the local score against the global cosine.",
         between(0.0, 1.0)),
    Spec("localization.min_score", 0.5, "Cosine score the best match needs to be accepted.", COSINE,
         dynamic=True),
    Spec("localization.min_margin", 0.02,
         "Score margin the best match needs over the best match at a distinct place.", between(0.0, 2.0),
         dynamic=True),
    Spec("localization.distinct_places", 5,
         "Map places within this many ids of the best match count as the same place for the margin test.",
         at_least(0), dynamic=True),
    Spec("localization.min_contrast", 0.03,
         "A frame whose RMS grey contrast is below this (dark, blank) is never accepted. Chosen on the "
         "Nordland-tiny development section, above its black tunnel frames (0.012-0.02).", between(0.0, 1.0),
         dynamic=True),
    Spec("pose.position_std_m", 2.0, "~/pose: position standard deviation of a clear match (the map's place "
         "spacing and route width).", between(1e-6, 1e6), dynamic=True),
    Spec("pose.rotation_std_deg", 15.0, "~/pose: rotation standard deviation of a clear match.",
         between(1e-6, 180.0), dynamic=True),
    Spec("pose.full_margin", 0.1, "~/pose: score margin at and above which the standard deviations are not "
         "widened; below it they are multiplied by full_margin / margin.", between(1e-6, 2.0), dynamic=True),
    Spec("pose.max_widening", 10.0, "~/pose: largest factor on the standard deviations of a weak match.",
         between(1.0, 1e6), dynamic=True),
    Spec("filter.enabled", False,
         "Sequence filter: a causal Bayes filter over the map's places (ids in recorded order) per camera. On, "
         "~/matches puts its most probable place first (raw retrieval in raw_matches), acceptance and ~/pose "
         "follow it. Odometry, when the frames have it and the map has poses, sets how far it moves. Needs a "
         "prebuilt map (mode localization or both)."),
    Spec("filter.top_k", 200, "Sequence filter: two-stage results per frame that enter its observation.",
         at_least(2)),
    Spec("filter.temperature", 1.5, "Sequence filter: divides the z-normalised scores of the top_k results; "
         "lower trusts a single frame more.", between(1e-3, 1e3)),
    Spec("filter.max_speed", 3, "Sequence filter: largest speed in map places per motion step, both "
         "directions.", at_least(0)),
    Spec("filter.speed_change", 0.05, "Sequence filter: probability per step that the speed changes, to any "
         "other speed alike (stops, reversals, speed-ups).", between(0.0, 1.0)),
    Spec("filter.position_jitter", 0.05, "Sequence filter: probability per step of one place extra forward "
         "or back.", between(0.0, 1.0)),
    Spec("filter.lost_probability", 0.003, "Sequence filter: share of the belief spread over the whole map "
         "each step, so that a kidnapped robot re-localizes.", between(0.0, 1.0)),
    Spec("filter.max_hypotheses", 256, "Sequence filter: most (place, speed) states kept explicitly.",
         at_least(1)),
    Spec("filter.confidence_radius", 1, "Sequence filter: places within this many ids of the best one count "
         "towards its probability.", at_least(0)),
    Spec("filter.min_probability", 0.5, "Sequence filter: probability the best place needs to be accepted.",
         between(0.0, 1.0), dynamic=True),
    Spec("filter.step_period_s", 0.0, "Sequence filter: > 0 makes one motion step per this many seconds "
         "between frames (dropped frames move the belief further); 0: one step per frame.", between(0.0, 3600.0)),
    Spec("filter.max_steps", 10, "Sequence filter: most motion steps for one gap between frames.", at_least(1)),
    Spec("keyframe.min_interval_s", 0.5, "slam: least time between two keyframes.", NON_NEGATIVE, dynamic=True),
    Spec("keyframe.min_distance_m", 0.0, "slam: least travel between keyframes when odometry is given.",
         NON_NEGATIVE, dynamic=True),
    Spec("keyframe.max_similarity", 0.98,
         "slam: a frame whose cosine to the last keyframe is above this is not a new keyframe.",
         COSINE, dynamic=True),
    Spec("odom_topic", "", "Optional nav_msgs/Odometry topic: slam keyframe poses, interpolated between the two "
         "messages around the image stamp; the slam map takes the odometry's header.frame_id.", _topic_or_empty),
    Spec("frames.map", "", "Frame of ~/pose; empty takes the prebuilt map's frame, otherwise it must equal it.",
         _frame_name_or_empty),
    Spec("frames.odom", "odom", "Frame of the slam keyframes' poses until an odometry message names one.",
         _frame_name),
    Spec("frames.base", "base_link", "The robot's base frame: ~/pose is its pose, the odometry its motion, and "
         "the tf lookup of the camera starts from it.", _frame_name),
    Spec("frames.base_to_camera", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
         "Pose of the camera (optical frame) in frames.base: x y z qx qy qz qw. Used when tf has no "
         "transform (or frames.use_tf is false); the identity takes the camera as the base.", _pose7),
    Spec("frames.use_tf", True, "Look the camera's pose in frames.base up from tf (frames.base -> the image's "
         "frame_id) where tf2_ros is installed; frames.base_to_camera otherwise."),
    Spec("loop.exclude_recent_frames", 20, "Keyframes just before the query that never count as a loop.",
         at_least(0)),
    Spec("loop.exclude_recent_seconds", 10.0, "Seconds before the query that never count as a loop.",
         at_least(0.0)),
    Spec("loop.min_score", 0.83, "Cosine score a loop candidate needs. Chosen for the default model on the "
         "Nordland-tiny development section: the lowest 0.01 step above its every false closure (README).",
         COSINE, dynamic=True),
    Spec("loop.min_departure", 0.35,
         "A loop needs a keyframe between match and query scoring this much below the match: the robot left "
         "the place (0 disables). Chosen on the Nordland-tiny development section (README).", between(0.0, 2.0),
         dynamic=True),
    Spec("loop.min_contrast", 0.03,
         "A keyframe whose RMS grey contrast is below this neither closes a loop nor is found as one "
         "(chosen as localization.min_contrast).", between(0.0, 1.0), dynamic=True),
    Spec("loop.consistency_k", 2, "A loop is published after k of the last n queries agree; 1 disables it.",
         at_least(1)),
    Spec("loop.consistency_n", 3, "Window n of the consistency check.", at_least(1)),
    Spec("loop.geometric", "none", f"Geometric verification: {spoken(GEOMETRIC_METHODS)}. With intrinsics "
         "(CameraInfo or camera.intrinsics) it also measures the loop's relative pose.", one_of(GEOMETRIC_METHODS)),
    Spec("loop.min_inliers", 30, "Inliers the geometric verification needs.", at_least(5)),
    Spec("publish_debug_image", False, "Publish ~/debug_image (rgb8): the query with the best place, its name, "
         "score and decision written under it (the map keeps no images)."),
    Spec("diagnostics_period_s", 1.0, "Period of /diagnostics messages.", between(0.05, 3600.0)),
)


SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


def declare(node: Node) -> dict[str, Any]:
    """Declares every parameter with its descriptor and returns the validated values.

    Raises ParameterError naming the first bad parameter and what to change; nothing is started
    before this returns. Parameters that cannot change after start are declared read-only, so
    `ros2 param set` refuses them with rclpy's own message.
    """
    values: dict[str, Any] = {}
    for spec in SPECS:
        descriptor = ParameterDescriptor(description=spec.description, type=_kind(spec.default),
                                         read_only=not spec.dynamic)
        try:
            value = node.declare_parameter(spec.name, spec.default, descriptor).value
        except Exception as exc:  # rclpy raises several types for a value of the wrong type
            raise ParameterError(f"parameter '{spec.name}': {exc}; expected {_type_name(spec.default)}, "
                                 f"e.g. {spec.default!r}") from exc
        values[spec.name] = list(value) if isinstance(spec.default, list) else value
    for name, value in values.items():
        _check_one(name, value)
    _check_together(values)
    _check_resolvable(node, values)
    return values


_TOPIC_PARAMETERS = ("image_topics", "camera_info_topics", "depth_topics", "odom_topic")


def _check_resolvable(node: Node, v: dict[str, Any]) -> None:
    """A well-formed name can still fail to expand in this node (an unknown ``{substitution}``);
    rclpy would only say so when subscribing, after the model has loaded, with a traceback."""
    for name in _TOPIC_PARAMETERS:
        for topic in v[name] if isinstance(v[name], list) else [v[name]]:
            if topic in ("", "auto", "none"):
                continue
            try:
                node.resolve_topic_name(topic)
            except RuntimeError as exc:  # rclpy's RCLError
                reason = str(exc).split(", at ")[0]  # drops the C source location
                raise ParameterError(f"parameter '{name}' has a topic name {topic!r} that cannot be resolved "
                                     f"({reason}); the known substitutions are {{node}}, {{ns}} and {{namespace}}") from None


def checked_change(values: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The parameter set after ``changes`` (run-time `ros2 param set`), validated by the same rules as
    at start; raises ParameterError with the reason, and then nothing changes."""
    new = dict(values)
    for name, value in changes.items():
        spec = SPEC_BY_NAME.get(name)
        if spec is None:
            continue  # rclpy's own parameters (use_sim_time, ...)
        if not spec.dynamic:
            raise ParameterError(f"parameter '{name}' cannot change while the node runs; restart it with the new value")
        if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(spec.default) and not isinstance(spec.default, list):
            raise ParameterError(f"parameter '{name}' = {value!r} must be a {_type_name(spec.default)}")
        new[name] = list(value) if isinstance(spec.default, list) else value
        _check_one(name, new[name])
    _check_together(new)
    return new


def _check_one(name: str, value: Any) -> None:
    spec = SPEC_BY_NAME[name]
    problem = spec.check(value) if spec.check else None
    if problem:
        raise ParameterError(f"parameter '{name}' = {value!r} {problem}")


def _type_name(default: Any) -> str:
    return f"list of {type(default[0]).__name__}" if isinstance(default, list) else type(default).__name__


def _check_together(v: dict[str, Any]) -> None:
    """Rules that involve more than one parameter or the file system."""
    from vpr_core.mapstore.uri import is_milvus_uri, parse_milvus_uri

    if v["mode"] in ("localization", "both"):
        if not v["map.path"]:
            raise ParameterError(f"parameter 'map.path' is empty but mode is '{v['mode']}': give the directory "
                                 "of a map built with `vpr build-map`, or set mode to 'slam'")
        if is_milvus_uri(v["map.path"]):
            try:
                location = parse_milvus_uri(v["map.path"])
            except ValueError as exc:
                raise ParameterError(f"parameter 'map.path': {exc}") from None
            if location.lite and not Path(location.client_uri).is_file():
                raise ParameterError(f"parameter 'map.path' = '{v['map.path']}': no Milvus Lite file "
                                     f"{location.client_uri}; push a map there with `vpr map push`")
        elif not (Path(v["map.path"]).expanduser() / "manifest.json").is_file():
            raise ParameterError(f"parameter 'map.path' = '{v['map.path']}' is not a map database (no "
                                 "manifest.json there); build one with `vpr build-map`")
    for name, what in (("model.checkpoint", "a checkpoint directory written by `vpr train`, or '' for the "
                                            "preset's untrained heads"),
                       ("model.local_branch", "a directory written by `vpr train-local`, or '' to search without it")):
        if v[name]:
            found = _find_checkpoint(v[name])
            if found is None:
                raise ParameterError(f"parameter '{name}' = '{v[name]}' does not exist in the working directory, "
                                     f"the package share or the source tree; give {what}")
            v[name] = str(found)
    if v["model.local_branch"] and v["mode"] == "slam":
        raise ParameterError("parameter 'model.local_branch' is set but mode is 'slam', which has no prebuilt "
                             "map to re-rank in: set mode 'localization' or 'both', or model.local_branch ''")
    if v["model.backbone_weights"] and not Path(v["model.backbone_weights"]).exists():
        raise ParameterError(f"parameter 'model.backbone_weights' = '{v['model.backbone_weights']}' does not "
                             "exist; download the backbone weights to a local path and point to it")
    if v["model.precision"] == "int8" and not v["model.calibration"]:
        raise ParameterError("parameter 'model.calibration' is empty but model.precision is 'int8': give a folder of "
                             "images or frame sources separated by ';', e.g. the frames the robot's map was built from")
    if v["model.precision"] == "int8" and v["model.backend"] not in INT8_BACKEND_CHOICES:
        raise ParameterError(f"parameter 'model.precision' = 'int8' runs on ONNX Runtime on the CPU, not on backend "
                             f"'{v['model.backend']}': set model.backend to auto or onnxruntime")
    if v["search.top_k"] > v["search.rerank_k"]:
        raise ParameterError(f"parameter 'search.top_k' = {v['search.top_k']} is larger than 'search.rerank_k' "
                             f"= {v['search.rerank_k']}: raise rerank_k or lower top_k")
    if v["filter.enabled"] and v["mode"] == "slam":
        raise ParameterError("parameter 'filter.enabled' is true but mode is 'slam', which has no prebuilt map "
                             "to filter over: set mode 'localization' or 'both', or filter.enabled false")
    if v["loop.consistency_k"] > v["loop.consistency_n"]:
        raise ParameterError(f"parameter 'loop.consistency_k' = {v['loop.consistency_k']} is larger than "
                             f"'loop.consistency_n' = {v['loop.consistency_n']}")
    cameras = len(v["image_topics"])
    for name, keyword in (("camera_info_topics", "auto"), ("depth_topics", "none")):
        if v[name] not in ([keyword], ["none"]) and len(v[name]) != cameras:
            raise ParameterError(f"parameter '{name}' = {v[name]!r} must be ['{keyword}'] or list one topic per "
                                 f"image topic ({cameras}; '' for a camera without)")


def _find_checkpoint(path: str) -> Path | None:
    """A relative checkpoint is tried against every place the shipped one can live, so the default
    works from `ros2 launch` after a colcon install as well as from the README's source checkout."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    roots = [Path.cwd()]
    try:
        from ament_index_python.packages import get_package_share_directory
        roots.append(Path(get_package_share_directory("vpr_ros")))
    except (ImportError, LookupError, OSError):  # not in a ROS workspace: the source tree is enough
        pass
    roots.append(Path(__file__).resolve().parents[1])
    return next((root / candidate for root in roots if (root / candidate).exists()), None)


def thresholds(v: dict[str, Any]) -> dict[str, Any]:
    """The run-time-changeable part of the configuration, as `Localizer.update_thresholds` takes it."""
    from vpr_core.keyframes import KeyframeConfig
    from vpr_core.localization_pose import PoseConfig
    from vpr_core.acceptance import AcceptanceConfig

    return {
        "localization": AcceptanceConfig(top_k=v["search.top_k"], min_score=v["localization.min_score"],
                                         min_margin=v["localization.min_margin"],
                                         distinct_places=v["localization.distinct_places"],
                                         min_contrast=v["localization.min_contrast"]),
        "loop_min_score": v["loop.min_score"], "loop_min_departure": v["loop.min_departure"],
        "loop_min_contrast": v["loop.min_contrast"],
        "keyframe": KeyframeConfig(min_interval_s=v["keyframe.min_interval_s"],
                                   min_distance_m=v["keyframe.min_distance_m"],
                                   max_similarity=v["keyframe.max_similarity"]),
        "pose": PoseConfig(position_std_m=v["pose.position_std_m"], rotation_std_deg=v["pose.rotation_std_deg"],
                           full_margin=v["pose.full_margin"], max_widening=v["pose.max_widening"]),
        "filter_min_probability": v["filter.min_probability"],
    }


def filter_config(v: dict[str, Any]):
    """The sequence filter's settings from the ``filter.*`` parameters."""
    from vpr_core.sequence_filter import SequenceFilterConfig

    return SequenceFilterConfig(
        enabled=v["filter.enabled"], top_k=v["filter.top_k"], temperature=v["filter.temperature"],
        max_speed=v["filter.max_speed"], speed_change=v["filter.speed_change"],
        position_jitter=v["filter.position_jitter"], lost_probability=v["filter.lost_probability"],
        max_hypotheses=v["filter.max_hypotheses"], confidence_radius=v["filter.confidence_radius"],
        min_probability=v["filter.min_probability"], step_period_s=v["filter.step_period_s"],
        max_steps=v["filter.max_steps"])


def localizer_config(v: dict[str, Any]):
    """The validated parameters as the pipeline's configuration (the node's only translation step)."""
    from vpr_core.engine import EncoderConfig
    from vpr_core.localizer import LocalizerConfig
    from vpr_core.mapstore.uri import is_milvus_uri
    from vpr_core.loop import LoopConfig
    from vpr_core.search import SearchConfig
    from vpr_core.search.local_rerank import LocalRerankConfig

    t = thresholds(v)
    search = SearchConfig(candidates=v["search.rerank_k"], max_candidates=v["search.rerank_k"],
                          adaptive=v["search.adaptive"], threads=v["search.threads"])
    return LocalizerConfig(
        mode=v["mode"], map_path=(v["map.path"] if is_milvus_uri(v["map.path"]) or not v["map.path"]
                                  else str(Path(v["map.path"]).expanduser())),
        slam_map_path=v["map.slam_path"], slam_fresh_start=v["slam.fresh_start"],
        encoder=EncoderConfig(preset=v["model.preset"], checkpoint=v["model.checkpoint"],
                              backbone_weights=v["model.backbone_weights"], backend=v["model.backend"],
                              max_batch=v["model.max_batch"], threads=v["model.threads"],
                              precision=v["model.precision"], calibration=v["model.calibration"],
                              calibration_frames=v["model.calibration_frames"],
                              cache_dir=v["model.engine_cache_dir"]),
        search=search, localization=t["localization"], keyframe=t["keyframe"], pose=t["pose"],
        loop=LoopConfig(exclude_recent_frames=v["loop.exclude_recent_frames"],
                        exclude_recent_seconds=v["loop.exclude_recent_seconds"],
                        min_score=t["loop_min_score"], min_departure=t["loop_min_departure"],
                        min_contrast=t["loop_min_contrast"],
                        consistency_k=v["loop.consistency_k"],
                        consistency_n=v["loop.consistency_n"], geometric=v["loop.geometric"],
                        min_inliers=v["loop.min_inliers"], search=SearchConfig(threads=v["search.threads"])),
        allow_batch_dependent=v["model.allow_batch_dependent"],
        local_branch=v["model.local_branch"],
        local_rerank=LocalRerankConfig(margin=v["search.local_margin"], max_candidates=v["search.local_max_candidates"],
                                       local_weight=v["search.local_weight"]),
        base_to_camera=tuple(v["frames.base_to_camera"]), slam_frame_id=v["frames.odom"],
        filter=filter_config(v),
    )
