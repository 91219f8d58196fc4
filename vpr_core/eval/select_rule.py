"""The rule that picks the default model from per-set headline scores, and the tables that show it.

A default must do no harm off its training route, so the best mean alone is not enough: a
candidate is eligible only when its headline score is not below the baseline's by more than
``TOLERANCE`` on any set. Among the eligible ones the best mean wins; a tie goes to the baseline
(changing the default must buy something), then to the candidate listed first. The baseline is
always eligible, so the rule always chooses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TOLERANCE = 0.01   # one point of recall, scores being fractions
# Scores are means over a few hundred queries: differences below this are float noise, not recall.
_EPS = 1e-9

RULE_TEXT = ("the default is the candidate with the best mean headline score whose headline score is not "
             "below the baseline's by more than {points:g} point(s) on any set; ties go to the baseline, then "
             "to the candidate listed first")


@dataclass(frozen=True)
class Shortfall:
    """A set where a candidate's headline score is more than the tolerance below the baseline's."""

    set_name: str
    score: float
    baseline_score: float


@dataclass
class RuleOutcome:
    chosen: str
    baseline: str
    means: dict[str, float]
    failed: dict[str, list[Shortfall]] = field(default_factory=dict)
    tolerance: float = TOLERANCE

    @property
    def text(self) -> str:
        return RULE_TEXT.format(points=100 * self.tolerance)

    def to_dict(self) -> dict:
        return {"rule": self.text, "chosen": self.chosen, "baseline": self.baseline, "tolerance": self.tolerance,
                "means": self.means,
                "failed": {name: [vars(s) for s in shortfalls] for name, shortfalls in self.failed.items()}}


def choose_default(headlines: Mapping[str, Mapping[str, float]], baseline: str,
                   tolerance: float = TOLERANCE) -> RuleOutcome:
    """``headlines``: per candidate (in listed order), its headline score per set (fractions)."""
    if baseline not in headlines:
        raise ValueError(f"the baseline {baseline!r} has no scores; candidates scored: {', '.join(headlines)}")
    sets = list(headlines[baseline])
    if not sets:
        raise ValueError("the baseline was scored on no set: give at least one set")
    for name, scores in headlines.items():
        if list(scores) != sets:
            raise ValueError(f"candidate {name} was scored on {list(scores)}, the baseline on {sets}: "
                             "every candidate needs a score on every set")
    means = {name: sum(scores.values()) / len(sets) for name, scores in headlines.items()}
    base = headlines[baseline]
    failed = {}
    for name, scores in headlines.items():
        shortfalls = [Shortfall(s, scores[s], base[s]) for s in sets if scores[s] < base[s] - tolerance - _EPS]
        if shortfalls:
            failed[name] = shortfalls
    order = list(headlines)
    eligible = [name for name in order if name not in failed]
    chosen = max(eligible, key=lambda n: (round(means[n] / _EPS), n == baseline, -order.index(n)))
    return RuleOutcome(chosen, baseline, means, failed, tolerance)


def headline_table(headlines: Mapping[str, Mapping[str, float]], outcome: RuleOutcome,
                   labels: Mapping[str, str]) -> str:
    """Markdown: one row per candidate with its headline score per set (percent), mean and verdict."""
    sets = list(headlines[outcome.baseline])
    lines = ["| candidate | " + " | ".join(labels.get(s, s) for s in sets) + " | mean | rule |",
             "|---" * (len(sets) + 3) + "|"]
    for name, scores in headlines.items():
        lines.append(f"| {_label(name, outcome)} | " + " | ".join(f"{100 * scores[s]:.1f}" for s in sets)
                     + f" | {100 * outcome.means[name]:.1f} | {_verdict(name, outcome, labels)} |")
    return "\n".join(lines)


def figures_table(figures: Mapping[str, Mapping[tuple[str, str], float]], outcome: RuleOutcome) -> str:
    """Markdown: one row per (set, figure), one column per candidate, values in percent."""
    names = list(figures)
    rows = list(dict.fromkeys(key for per in figures.values() for key in per))
    lines = ["| set | figure | " + " | ".join(_label(n, outcome) for n in names) + " |",
             "|---" * (len(names) + 2) + "|"]
    for set_label, figure in rows:
        cells = [f"{100 * figures[n][(set_label, figure)]:.1f}" if (set_label, figure) in figures[n] else "-"
                 for n in names]
        lines.append(f"| {set_label} | {figure} | " + " | ".join(cells) + " |")
    lines.append("| mean of headlines | | " + " | ".join(f"{100 * outcome.means[n]:.1f}" for n in names) + " |")
    return "\n".join(lines)


def rule_summary(outcome: RuleOutcome, labels: Mapping[str, str]) -> str:
    means = outcome.means
    lines = [f"Rule: {outcome.text}.",
             f"Chosen default: {outcome.chosen} (mean {100 * means[outcome.chosen]:.1f}; "
             f"baseline {outcome.baseline} {100 * means[outcome.baseline]:.1f})."]
    if outcome.failed:
        lines.append("Failed the rule: " + "; ".join(f"{name} ({_verdict(name, outcome, labels)})"
                                                     for name in outcome.failed) + ".")
    else:
        lines.append("No candidate failed the rule.")
    return "\n".join(lines)


def _label(name: str, outcome: RuleOutcome) -> str:
    marks = [m for m, on in (("baseline", name == outcome.baseline), ("chosen", name == outcome.chosen)) if on]
    return f"{name} ({', '.join(marks)})" if marks else name


def _verdict(name: str, outcome: RuleOutcome, labels: Mapping[str, str]) -> str:
    if name not in outcome.failed:
        return "chosen" if name == outcome.chosen else "eligible"
    return "fails on " + ", ".join(f"{labels.get(s.set_name, s.set_name)} ({100 * s.score:.1f} vs "
                                   f"{100 * s.baseline_score:.1f})" for s in outcome.failed[name])
