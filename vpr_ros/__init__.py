"""vpr_ros: the thin ROS 2 layer (nodes, message conversion, parameters) over vpr_core.

In a venv the generated `vpr_ros.msg` lives in a second directory named vpr_ros (see
scripts/build_msgs.sh); extend_path joins it to this one. In a colcon install this file is not
installed: the message generator's own __init__.py is used.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
