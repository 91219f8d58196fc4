"""`vpr eval` on a few real corridor images with the real lite0 encoder: results, JSON, report PNG, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from frame_sources import small_corridor_layout

from vpr_core import cli
from vpr_core.data import EvalDataset, ImageFiles, open_dataset
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.eval.evaluate import EXAMPLES_FILE, RESULTS_FILE, evaluate, example_queries
from vpr_core.eval.recall_table import format_table
from vpr_core.search import SearchConfig

N_QUERIES, N_REFS = 6, 10


@pytest.fixture(scope="module")
def encoder():
    return create_encoder(EncoderConfig(preset="lite0", backend="torch", device="cpu"))


@pytest.fixture(scope="module")
def corridor_subset(data_dir) -> EvalDataset:
    """The first corridor queries against the first references, positives cut to those references."""
    full = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    return EvalDataset(
        name="corridor subset",
        database=ImageFiles(full.database.root, full.database.files[:N_REFS]),
        queries=ImageFiles(full.queries.root, full.queries.files[:N_QUERIES]),
        positive_lists=[p[p < N_REFS] for p in full.positive_lists[:N_QUERIES]],
        rule=full.rule,
    )


def test_evaluate_recalls_match_predictions_and_files(corridor_subset, encoder, tmp_path) -> None:
    start = time.perf_counter()
    results = evaluate(corridor_subset, encoder, SearchConfig(), ns=(1, 5, 10, 20), out_dir=tmp_path, examples=3)
    wall_ms = (time.perf_counter() - start) * 1e3

    assert results["search"]["ns"] == [1, 5, 10]  # 20 > 10 database frames: left out
    positives = corridor_subset.positive_lists
    db = np.stack([f.rgb for f in corridor_subset.database])
    queries = np.stack([f.rgb for f in corridor_subset.queries])
    _, db_desc = encoder.encode(db)
    _, q_desc = encoder.encode(queries)
    exhaustive = np.argsort(-(q_desc @ db_desc.T), axis=1, kind="stable")
    for method in ("float", "two_stage"):
        summary = results["methods"][method]
        assert summary["num_queries"] == sum(p.size > 0 for p in positives)
        for n in (1, 5, 10):
            ids = results["predictions"][method][n]
            assert ids.shape == (N_QUERIES, n) and ids.min() >= 0 and ids.max() < N_REFS
            hits = [np.isin(ids[q, :n], p).any() for q, p in enumerate(positives) if p.size]
            assert summary["recall"][f"R@{n}"] == pytest.approx(np.mean(hits))
            assert 0 < summary["latency_ms"][f"k={n}"]["median"] < wall_ms
    for n in (1, 5, 10):
        assert np.array_equal(results["predictions"]["float"][n], exhaustive[:, :n])
    shown = results["search"]["shown_k"]
    assert shown == 5
    same = np.mean(results["predictions"]["two_stage"][shown][:, 0] == exhaustive[:, 0])
    assert results["methods"]["two_stage"]["top1_same_as_float"] == same

    written = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert written == {key: value for key, value in results.items() if key != "predictions"}
    assert written["encoder"]["fingerprint"] == encoder.fingerprint
    assert written["dataset"]["database_frames"] == N_REFS
    assert written["encode"]["images"] == N_REFS + N_QUERIES
    assert 0 < written["encode"]["ms_per_image"] * (N_REFS + N_QUERIES) < wall_ms

    rows = written["examples"]["queries"]
    assert [row["query"] for row in rows] == example_queries(corridor_subset, 3)
    for row in rows:
        assert row["retrieved"] == results["predictions"]["two_stage"][shown][row["query"]].tolist()
        assert row["correct"] == np.isin(row["retrieved"], positives[row["query"]]).tolist()
        assert row["truth"] in positives[row["query"]]
    png = cv2.imread(str(tmp_path / EXAMPLES_FILE))
    assert png is not None and png.shape[0] > 3 * 100 and png.shape[1] > 7 * 100

    table = format_table(results)
    assert "float-only" in table and "two-stage" in table
    assert f"{100 * results['methods']['two_stage']['recall']['R@1']:.1f}" in table


def test_recall_n_larger_than_every_database_is_refused(corridor_subset, encoder) -> None:
    with pytest.raises(ValueError, match="fits a database of 10 frames"):
        evaluate(corridor_subset, encoder, SearchConfig(), ns=(20, 100), out_dir=None)


def test_example_queries_spread_over_queries_with_positives(corridor_subset) -> None:
    dataset = EvalDataset(
        name="gaps",
        database=corridor_subset.database,
        queries=corridor_subset.queries,
        positive_lists=[np.array([q]) if q % 3 else np.array([], np.int64) for q in range(N_QUERIES)],
        rule="test",
    )
    assert example_queries(dataset, 3) == [1, 4, 5]
    assert example_queries(dataset, 50) == [1, 2, 4, 5]


def test_cli_writes_results_and_report(data_dir, tmp_path, capsys) -> None:
    layout = small_corridor_layout(data_dir, tmp_path / "mini", n_queries=4, n_refs=6)
    out = tmp_path / "out"
    code = cli.main(["eval", "--dataset", str(layout), "--layout", "vpr_bench", "--backend", "torch",
                     "--ns", "1", "5", "--out", str(out), "--examples", "2", "--filter", "--smooth"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "float-only" in printed and "two-stage" in printed and str(out / EXAMPLES_FILE) in printed
    written = json.loads((out / RESULTS_FILE).read_text())
    route = written["sequence"]  # the queries as one route; its per-frame two-stage top-1 is R@1
    assert route["frames"] == 4 and route["filter"]["enabled"]
    assert route["two_stage_r1"] == written["methods"]["two_stage"]["recall"]["R@1"]
    assert 0.0 <= route["filtered_r1"] <= 1.0 and 0.0 <= route["smoothed_r1"] <= 1.0
    assert f"sequence filter {100 * route['filtered_r1']:.1f}" in printed
    assert set(written["methods"]["two_stage"]["recall"]) == {"R@1", "R@5"}
    assert written["dataset"]["query_frames"] == 4 and written["encoder"]["backend"] == "torch"
    assert len(written["examples"]["queries"]) == 2
    assert cv2.imread(str(out / EXAMPLES_FILE)) is not None


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        ("{data}/no_such_set", [], "no_such_set does not exist"),
        ("{data}/corridor", ["--layout", "seasons"], "season folder"),
        ("vpr_bench:{data}/corridor", ["--layout", "seasons"], "contradicts the reader 'vpr_bench'"),
        ("seasons:{data}/nordland_tiny?split=middle", [], "split must be one of dev, test"),
        ("{data}/corridor", ["--ns", "500"], "fits a database of 111 frames"),
        ("{data}/corridor", ["--examples", "-1"], "--examples must be >= 0"),
        ("{data}/corridor", ["--smooth"], "give --filter too"),
    ],
)
def test_cli_refuses_bad_input_with_a_clear_message(data_dir, tmp_path, capsys, spec, extra, message) -> None:
    out = tmp_path / "out"
    assert cli.main(["eval", "--dataset", spec.format(data=data_dir), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
