"""vpr_core: the visual place recognition engine, usable without ROS.

Everything here is plain Python + numpy/torch/faiss; the ROS layer lives in ``vpr_ros``.
"""

__version__ = "0.1.0"
