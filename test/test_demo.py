"""The README's demo command, on a few frames: same code path, real node, real bag player."""

import re

from conftest import python_process


def test_demo_ends_with_recall_latency_and_the_report(ros_env, data_dir, tmp_path):
    demo = python_process(["-m", "vpr_ros.demo", "--data", str(data_dir), "--queries", "6", "--rate", "2",
                           "--backend", "torch", "--out", str(tmp_path)], ros_env)
    output = demo.communicate(timeout=600)[0]
    assert demo.returncode == 0, output
    assert "[launch]" in output and "[localize_node-1]" in output  # started through `ros2 launch`
    lines = [line for line in output.splitlines() if re.match(r"\s+query .* -> place", line)]
    assert len(lines) == 6, output
    summary = re.search(r"\[demo\] (\d+)/6 frames answered; Recall@1 ([\d.]+).*p50 ([\d.]+) ms.*"
                        r"example retrievals: (\S+)", output)
    assert summary, output
    answered, recall = int(summary.group(1)), float(summary.group(2))
    assert answered == 6, output      # 2 Hz is far below the node's rate: no frame may go unanswered
    correct = sum("correct" in line for line in lines)
    assert abs(recall - correct / answered) < 1e-3
    assert (tmp_path / "corridor" / "examples.png").stat().st_size > 10_000
    assert (tmp_path / "corridor" / "map-lite0-fused" / "manifest.json").is_file()
