"""Selection of the default model across domains (``vpr select``, ``python -m vpr_core.eval.select_default``).

Scores every candidate model (``select_candidates``) on every real set we hold (``select_sets``:
Corridor, rtabmap_loop as retrieval and as loops, the Nordland-tiny validation slice of the
development section) and applies the rule of ``select_rule``: the best mean of the per-set headline
scores among the candidates that are nowhere more than one point below the frozen baseline. Writes
``table.md`` (printed too) and ``results.json`` (every figure) to ``out/select/<UTC stamp>/``.

The Nordland-tiny test section is held out: only ``--final NAME`` reads it, scoring that one
candidate for the final report once the choice is made on the other sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vpr_core.cli import run_module
from vpr_core.data import EvalDataset
from vpr_core.data.seasons import SPLITS
from vpr_core.engine import Encoder, create_encoder
from vpr_core.eval.evaluate import open_eval_dataset
from vpr_core.eval.recall import to_jsonable, write_json
from vpr_core.eval.select_candidates import Candidate, baseline_of, default_candidates, load_candidates
from vpr_core.eval.select_rule import RuleOutcome, choose_default, figures_table, headline_table, rule_summary
from vpr_core.eval.select_sets import (SET_LABELS, SETS, OpenedSets, SetSources, adapt_encoded, encode_sets,
                                       headline, open_sets, retrieval_figures, score_sets)
from vpr_core.options import COUNT, THREADS, argument
from vpr_core.search import SearchConfig
from vpr_core.train.config import DataConfig, load_train_config

RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"


def select_default(
    candidates: list[Candidate],
    sources: SetSources = SetSources(),
    *,
    search_config: SearchConfig = SearchConfig(),
    threads: int = 0,
    out_dir: Path | None = None,
    final: str | None = None,
) -> dict[str, Any]:
    """Scores the candidates, applies the rule, and returns (and with ``out_dir`` writes) the results;
    ``results["table"]`` is the markdown of ``table.md``. With ``final`` (a candidate's name) that
    candidate is also scored on the held-out Nordland test section, reported apart."""
    baseline = baseline_of(candidates)
    if final is not None and final not in {c.name for c in candidates}:
        raise ValueError(f"--final {final}: no such candidate; candidates: {', '.join(c.name for c in candidates)}")
    opened = open_sets(sources)
    test_set = open_eval_dataset(f"seasons:{sources.nordland.root}?split={sources.nordland.test_split}"
                                 f"&database={sources.nordland.seasons[0]}&queries={sources.nordland.seasons[-1]}"
                                 f"&tolerance={sources.nordland.positive_radius}") if final else None
    figures: dict[str, dict[str, dict[str, float]]] = {}
    models: dict[str, dict[str, Any]] = {}
    final_figures = None
    for group in _by_model(candidates):
        encoder = create_encoder(group[0].encoder_config(threads))
        encodings = encode_sets(opened, encoder)
        for candidate in group:
            print(f"scoring {candidate.name}", file=sys.stderr)
            figures[candidate.name] = score_sets(opened, encodings, candidate.adapt, sources.sets, search_config)
            models[candidate.name] = {**encodings.encoder, "adapt": candidate.adapt,
                                      "ms_per_image": encodings.ms_per_image}
        chosen_final = next((c for c in group if c.name == final), None)
        if chosen_final is not None:
            final_figures = _score_final(test_set, encoder, chosen_final, search_config)
    figures = {c.name: figures[c.name] for c in candidates}
    headlines = {name: {s: headline(s, per_set[s]) for s in sources.sets} for name, per_set in figures.items()}
    outcome = choose_default(headlines, baseline.name)
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sets": {s: {"label": SET_LABELS[s], "data": _set_summary(opened, s)} for s in sources.sets},
        "search": dataclasses.asdict(search_config),
        "candidates": [dataclasses.asdict(c) for c in candidates],
        "models": models,
        "figures": figures,
        "headlines": headlines,
        "outcome": outcome.to_dict(),
    }
    if final_figures is not None:
        results["final"] = {"candidate": final, "set": test_set.name, "figures": final_figures}
    results["table"] = render_table(results, outcome)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / TABLE_FILE).write_text(results["table"] + "\n")
        write_json(out_dir / RESULTS_FILE, results)
    return to_jsonable(results)


def _by_model(candidates: list[Candidate]) -> list[list[Candidate]]:
    """Candidates grouped by model, in the order each model first appears: one encoding per group."""
    groups: dict[tuple[str, str, str], list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.model_key, []).append(c)
    return list(groups.values())


def _score_final(test_set: EvalDataset, encoder: Encoder, candidate: Candidate,
                 search_config: SearchConfig) -> dict[str, float]:
    encodings = encode_sets(OpenedSets({"nordland-test": test_set}), encoder)
    adapted = adapt_encoded(encodings.sets["nordland-test"], candidate.adapt, encodings.bits, encodings.fingerprint)
    return retrieval_figures(adapted, search_config)


def _set_summary(opened: OpenedSets, set_name: str) -> dict[str, Any]:
    if set_name == "rtabmap-loops":
        return {"name": opened.loop.name, "frames": len(opened.loop), "loop_frames": opened.loop.loop_frames}
    return opened.retrieval[set_name].summary()


def render_table(results: dict[str, Any], outcome: RuleOutcome) -> str:
    """The markdown of ``table.md``: headline scores with the rule's verdicts, every figure, the rule."""
    labels = {s: info["label"] for s, info in results["sets"].items()}
    figures = {name: {(labels[s], figure): value for s, per in per_set.items() for figure, value in per.items()}
               for name, per_set in results["figures"].items()}
    sets = ", ".join(f"{info['label']} ({info['data']['name']})" for info in results["sets"].values())
    parts = [f"# Default-model selection ({results['date']})", "", f"Sets: {sets}.", "",
             "## Headline scores (percent: two-stage R@1; loops: recall at 100 % precision)", "",
             headline_table(results["headlines"], outcome, labels), "", "## Every figure (percent)", "",
             figures_table(figures, outcome), "", rule_summary(outcome, labels)]
    if "final" in results:
        final = results["final"]
        parts += ["", f"## Held-out test: {final['set']}, candidate {final['candidate']} only", "",
                  "| figure | value |", "|---|---|"]
        parts += [f"| {figure} | {100 * value:.1f} |" for figure, value in final["figures"].items()]
    return "\n".join(parts)


def default_out_dir() -> Path:
    return Path("out") / "select" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidates", type=Path, help="YAML/JSON candidate list (see config/select/candidates.yaml; "
                        "default: frozen lite0 as baseline, the Nordland heads, the fused default, lite1/lite2 where "
                        "installed, each with adapt none, whiten and itq)")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS), metavar="SET",
                        help=f"sets to score (default: all of {', '.join(SETS)})")
    parser.add_argument("--corridor", default=SetSources.corridor, help="Corridor data set spec")
    parser.add_argument("--loop-folder", default=SetSources.loop_folder,
                        help="loop folder (images/ + loop_pairs.csv), scored as retrieval and as loops")
    parser.add_argument("--train-config", type=Path,
                        help="training config whose data section defines the Nordland validation slice "
                             "(default: the DataConfig defaults, as config/train/lite0-nordland.yaml)")
    parser.add_argument("--nordland", help=f"Nordland-tiny folder (default: the training config's, {DataConfig.root})")
    parser.add_argument("--threads", type=argument(int, THREADS), default=0,
                        help="encoder threads (0: library default)")
    parser.add_argument("--max-candidates", type=argument(int, COUNT), default=SearchConfig.max_candidates,
                        help="largest re-rank pool of the two-stage search")
    parser.add_argument("--out", type=Path, help="output folder (default: out/select/<UTC stamp>)")
    parser.add_argument("--final", metavar="NAME",
                        help="also score this one candidate on the held-out Nordland test section (final report only)")


def run(args: argparse.Namespace) -> int:
    candidates = load_candidates(args.candidates) if args.candidates else default_candidates()
    data = load_train_config(args.train_config).data if args.train_config else DataConfig()
    if args.nordland:
        data = dataclasses.replace(data, root=args.nordland)
    if data.test_split not in SPLITS:
        raise ValueError(f"the training config's data.test_split {data.test_split!r} is not one of {', '.join(SPLITS)}")
    sources = SetSources(corridor=args.corridor, loop_folder=args.loop_folder, nordland=data, sets=tuple(args.sets))
    search_config = SearchConfig(max_candidates=args.max_candidates,
                                 min_candidates=min(SearchConfig.min_candidates, args.max_candidates))
    out_dir = args.out if args.out is not None else default_out_dir()
    results = select_default(candidates, sources, search_config=search_config, threads=args.threads,
                             out_dir=out_dir, final=args.final)
    print(results["table"])
    print(f"table: {out_dir / TABLE_FILE}; results: {out_dir / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr select"))
