"""Default-model selection: the rule on hand-made score tables, the candidate file, the Nordland
validation slice, and one cheap real run through the command line on a few Corridor frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from frame_sources import small_corridor_layout

from vpr_core.cli import run_module
from vpr_core.data import open_dataset
from vpr_core.data.seasons import SPLITS
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.eval import select_default as select_module
from vpr_core.eval.evaluate import evaluate
from vpr_core.eval.select_candidates import Candidate, default_candidates, load_candidates
from vpr_core.eval.select_rule import choose_default
from vpr_core.eval.select_sets import OpenedSets, encode_sets, nordland_validation_spec, retrieval_figures
from vpr_core.search import SearchConfig
from vpr_core.train.config import DataConfig, TrainConfig
from vpr_core.train.places import nordland_places
from vpr_core.train.trainer import SplitData, train_val_split

REPO = Path(__file__).resolve().parents[1]
SETS = ("corridor", "rtabmap-retrieval", "rtabmap-loops", "nordland-val")


def table(**rows: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """Headline scores in points per candidate, as fractions per set."""
    return {name: {s: v / 100 for s, v in zip(SETS, values)} for name, values in rows.items()}


# ---- the rule -----------------------------------------------------------------------------------
def test_a_better_mean_one_and_a_half_points_under_the_baseline_on_one_set_is_rejected() -> None:
    outcome = choose_default(table(base=(70, 90, 50, 30), bold=(68.5, 99, 60, 40), safe=(69.5, 92, 51, 31)), "base")
    assert outcome.means["bold"] > outcome.means["safe"] > outcome.means["base"]
    assert outcome.chosen == "safe"
    assert [(s.set_name, s.score, s.baseline_score) for s in outcome.failed["bold"]] == [("corridor", 0.685, 0.70)]
    assert set(outcome.failed) == {"bold"}


def test_exactly_one_point_under_is_allowed() -> None:
    outcome = choose_default(table(base=(70, 90, 50, 30), edge=(69, 89, 49, 40)), "base")
    assert outcome.chosen == "edge" and not outcome.failed


def test_ties_go_to_the_baseline_then_to_the_candidate_listed_first() -> None:
    tied_with_base = choose_default(table(first=(71, 89, 50, 30), base=(70, 90, 50, 30)), "base")
    assert tied_with_base.chosen == "base"
    tied = choose_default(table(base=(70, 90, 50, 30), b=(72, 90, 50, 30), a=(70, 92, 50, 30)), "base")
    assert tied.means["a"] == pytest.approx(tied.means["b"]) and tied.chosen == "b"


def test_the_baseline_is_always_eligible() -> None:
    outcome = choose_default(table(base=(10, 0, 0, 5), worse=(8, 0, 0, 5)), "base")
    assert outcome.chosen == "base" and "base" not in outcome.failed and "worse" in outcome.failed


def test_the_rule_refuses_tables_it_cannot_compare() -> None:
    with pytest.raises(ValueError, match="baseline 'nobody' has no scores"):
        choose_default(table(base=(1, 2, 3, 4)), "nobody")
    scores = table(base=(1, 2, 3, 4))
    scores["short"] = {"corridor": 0.5}
    with pytest.raises(ValueError, match="every candidate needs a score on every set"):
        choose_default(scores, "base")


# ---- the candidate file -------------------------------------------------------------------------
def test_the_shipped_candidate_file_is_the_built_in_list(monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # its checkpoint paths are relative to the repository root
    listed = load_candidates("config/select/candidates.yaml")
    built_in = default_candidates()
    assert [c.name for c in listed] == [c.name for c in built_in]
    for file_entry, code_entry in zip(listed, built_in):
        assert (file_entry.preset, file_entry.adapt, file_entry.baseline) == (code_entry.preset, code_entry.adapt,
                                                                             code_entry.baseline)
        assert Path(file_entry.checkpoint).resolve() == Path(code_entry.checkpoint).resolve() if \
            code_entry.checkpoint else not file_entry.checkpoint
    assert [c.name for c in built_in if c.baseline] == ["lite0-frozen"]
    assert {c.adapt for c in built_in} == {"none", "whiten", "itq"}


def test_a_json_candidate_file_loads(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"name": "a", "preset": "lite0", "baseline": True},
                                {"name": "b", "preset": "lite0", "adapt": "whiten", "backend": "torch"}]))
    assert load_candidates(path) == [Candidate("a", preset="lite0", baseline=True),
                                     Candidate("b", preset="lite0", adapt="whiten", backend="torch")]


BASE = "- {name: base, preset: lite0, baseline: true}\n"


@pytest.mark.parametrize(("text", "message"), [
    ("name: a\n", "expected a non-empty list of candidates"),
    ("- [a, b]\n", "entry 1: expected a mapping"),
    ("- {name: [unclosed\n", "is not valid YAML"),
    (BASE + "- {name: x, preset: lite0, colour: red}\n", "entry 2: unknown key(s) ['colour']"),
    (BASE + "- {preset: lite0}\n", "entry 2: every candidate needs a name"),
    (BASE + "- {name: x, preset: lite0, checkpoint: checkpoints/lite0-nordland}\n",
     "exactly one of preset and checkpoint"),
    (BASE + "- {name: x}\n", "exactly one of preset and checkpoint"),
    (BASE + "- {name: x, preset: lite9}\n", "unknown preset 'lite9'"),
    (BASE + "- {name: x, checkpoint: no/such/dir}\n", "checkpoint directory no/such/dir does not exist"),
    (BASE + "- {name: x, preset: lite0, adapt: pca}\n", "adapt must be one of none, whiten, itq"),
    (BASE + "- {name: x, preset: lite0, backend: cuda}\n", "backend must be one of"),
    (BASE + "- {name: 'two words', preset: lite0}\n", "candidate name 'two words'"),
    (BASE + "- {name: base, preset: lite0, adapt: itq}\n", "names must be unique; repeated: base"),
    ("- {name: a, preset: lite0}\n", "exactly one candidate must have baseline: true"),
    (BASE + "- {name: b, preset: lite0, baseline: true}\n", "got 2: base, b"),
])
def test_bad_candidate_files_are_refused_with_the_reason(tmp_path, text, message) -> None:
    path = tmp_path / "candidates.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_candidates(path)
    assert message in str(err.value)


# ---- the sets -----------------------------------------------------------------------------------
def test_the_nordland_slice_is_the_one_vpr_train_validates_on(data_dir) -> None:
    data = DataConfig(root=str(data_dir / "nordland_tiny"))
    places, files = nordland_places(data.root, SPLITS[data.split], data.seasons)
    _, val = train_val_split(SplitData(None, places, np.arange(len(files))), TrainConfig(data=data))
    spec = nordland_validation_spec(data)
    assert f"&first={val.places.names[0]}&last={val.places.names[-1]}&" in spec
    assert val.places.names[-1] == "images-28610" and "test" not in spec  # the end of dev, never the test section
    opened = open_dataset(spec)
    assert len(opened.queries) == len(opened.database) == val.places.num_places


def test_figures_from_arrays_equal_vpr_evals(data_dir, tmp_path, torch_threads) -> None:
    dataset = open_dataset(f"vpr_bench:{small_corridor_layout(data_dir, tmp_path / 'mini', 8, 12)}")
    encoder = create_encoder(EncoderConfig(preset="lite0", backend="torch", device="cpu"))
    reference = evaluate(dataset, encoder, SearchConfig(), ns=[1, 5], examples=0)["methods"]
    ours = retrieval_figures(encode_sets(OpenedSets({"corridor": dataset}), encoder).sets["corridor"], SearchConfig())
    for method, label in (("float", "float"), ("two_stage", "two-stage")):
        for n in (1, 5):
            assert ours[f"{label} R@{n}"] == reference[method]["recall"][f"R@{n}"]
    assert ours["two-stage top-1 = float top-1"] == reference["two_stage"]["top1_same_as_float"]


# ---- the command line ---------------------------------------------------------------------------
def test_cli_scores_candidates_encodes_each_model_once_and_writes_the_table(data_dir, tmp_path, capsys,
                                                                             monkeypatch, torch_threads) -> None:
    corridor = small_corridor_layout(data_dir, tmp_path / "mini", 8, 12)
    candidates = tmp_path / "candidates.yaml"
    candidates.write_text("- {name: lite0-frozen, preset: lite0, backend: torch, baseline: true}\n"
                          "- {name: lite0-frozen+itq, preset: lite0, backend: torch, adapt: itq}\n")
    built = []
    monkeypatch.setattr(select_module, "create_encoder", lambda config: built.append(config) or create_encoder(config))
    out = tmp_path / "out"
    code = run_module(select_module, "vpr select", ["--candidates", str(candidates), "--sets", "corridor",
                                                    "--corridor", f"vpr_bench:{corridor}", "--out", str(out)])
    assert code == 0
    assert len(built) == 1  # the itq variant reuses the baseline model's encodings
    printed = capsys.readouterr().out
    written = (out / "table.md").read_text()
    assert written.strip() in printed
    assert "| lite0-frozen (baseline" in written and "| lite0-frozen+itq" in written and "Chosen default:" in written
    results = json.loads((out / "results.json").read_text())
    assert list(results["headlines"]) == ["lite0-frozen", "lite0-frozen+itq"]
    for name, figures in results["figures"].items():
        assert results["headlines"][name] == {"corridor": figures["corridor"]["two-stage R@1"]}
        assert set(figures["corridor"]) >= {"float R@1", "float R@5", "two-stage R@1", "two-stage R@5"}
    assert results["models"]["lite0-frozen+itq"]["adapt"] == "itq"
    assert results["outcome"]["chosen"] in results["headlines"]
    assert "final" not in results


@pytest.mark.parametrize(("args", "message"), [
    (["--final", "nobody"], "--final nobody: no such candidate"),
    (["--candidates", "no/such.yaml"], "candidate file no/such.yaml not found"),
    (["--sets", "corridor", "--corridor", "vpr_bench:no/such/set"], "no/such/set"),
])
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys, args, message) -> None:
    out = tmp_path / "out"
    assert run_module(select_module, "vpr select", [*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vpr select: error: ") and message in err and "\n" not in err
    assert not out.exists()
