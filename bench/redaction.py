"""PII redaction: recall, precision and false positives over the labelled samples, and time per message.

A finding counts as found only if its span and category match a labelled one exactly; "leaked" counts
labelled values not fully inside any redacted span, whatever category it was given. Samples marked
out_of_scope (personal data the redactor does not claim to find) are reported apart.

    python bench/redaction.py                                   # tests/privacy/redaction_samples.json
    python bench/redaction.py path/to/samples.json --repeat 200

tests/privacy/test_redaction.py loads this file for :func:`score`, so the figures it asserts are the
figures printed here.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.privacy.redaction import PlaceholderMap, RedactionRule, Redactor

DEFAULT_SAMPLES = Path(__file__).resolve().parent.parent / "tests/privacy/redaction_samples.json"


@dataclass(frozen=True)
class Sample:
    lang: str
    text: str
    spans: tuple[tuple[str, int, int], ...]  # (category, start, end)
    out_of_scope: bool = False


@dataclass
class Scores:
    tp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    leaked: int = 0
    negatives: int = 0
    negatives_hit: int = 0
    out_of_scope_found: int = 0
    out_of_scope_total: int = 0
    false_positives: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        found, expected = sum(self.tp.values()), sum(self.tp.values()) + sum(self.fn.values())
        return found / expected if expected else 1.0

    @property
    def precision(self) -> float:
        found, claimed = sum(self.tp.values()), sum(self.tp.values()) + sum(self.fp.values())
        return found / claimed if claimed else 1.0

    @property
    def false_positive_rate(self) -> float:
        """Share of redactions that hit no personal data (1 - precision)."""
        return 1.0 - self.precision

    @property
    def negative_message_rate(self) -> float:
        """Share of messages without personal data in which anything was redacted."""
        return self.negatives_hit / self.negatives if self.negatives else 0.0


def load(path: Path) -> tuple[Redactor, list[Sample]]:
    """The redactor the samples file configures, and its samples with spans located in the text."""
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    config = doc.get("config", {})
    redactor = Redactor(
        rules=[RedactionRule(**rule) for rule in config.get("rules", [])],
        names=config.get("names", []),
    )
    samples = []
    for raw in doc["samples"]:
        spans, pos = [], 0
        for category, value in raw["pii"]:
            start = raw["text"].find(value, pos)
            if start < 0:
                raise ValueError(f"{value!r} is not in {raw['text']!r} (after offset {pos})")
            spans.append((category, start, start + len(value)))
            pos = start + len(value)
        samples.append(
            Sample(raw["lang"], raw["text"], tuple(spans), raw.get("out_of_scope", False))
        )
    return redactor, samples


def score(redactor: Redactor, samples: list[Sample]) -> Scores:
    s = Scores()
    for sample in samples:
        found = {(f.category, f.start, f.end) for f in redactor.find(sample.text)}
        expected = set(sample.spans)
        if sample.out_of_scope:
            s.out_of_scope_total += len(expected)
            s.out_of_scope_found += sum(
                any(a <= start and end <= b for _, a, b in found) for _, start, end in expected
            )
            continue
        if not expected:
            s.negatives += 1
            s.negatives_hit += bool(found)
        for span in expected:
            category, start, end = span
            if span in found:
                s.tp[category] += 1
            else:
                s.fn[category] += 1
                s.misses.append(f"{category}: {sample.text[start:end]!r} in {sample.text!r}")
            s.leaked += not any(a <= start and end <= b for _, a, b in found)
        for span in found - expected:
            category, start, end = span
            s.fp[category] += 1
            s.false_positives.append(f"{category}: {sample.text[start:end]!r} in {sample.text!r}")
    return s


def time_per_message(redactor: Redactor, samples: list[Sample], repeat: int) -> float:
    """Mean seconds for one redact() of one sample, each conversation with its own map."""
    texts = [sample.text for sample in samples]
    started = time.perf_counter()
    for _ in range(repeat):
        mapping = PlaceholderMap()
        for text in texts:
            redactor.redact(text, mapping)
    return (time.perf_counter() - started) / (repeat * len(texts))


def report(s: Scores) -> str:
    lines = [
        f"{'category':<12} {'found':>5} {'missed':>6} {'false+':>6} {'recall':>7} {'precision':>9}"
    ]
    for category in sorted(set(s.tp) | set(s.fn) | set(s.fp)):
        tp, fn, fp = s.tp[category], s.fn[category], s.fp[category]
        recall = tp / (tp + fn) if tp + fn else float("nan")
        precision = tp / (tp + fp) if tp + fp else float("nan")
        lines.append(f"{category:<12} {tp:>5} {fn:>6} {fp:>6} {recall:>7.3f} {precision:>9.3f}")
    tp, fn, fp = sum(s.tp.values()), sum(s.fn.values()), sum(s.fp.values())
    lines += [
        f"{'overall':<12} {tp:>5} {fn:>6} {fp:>6} {s.recall:>7.3f} {s.precision:>9.3f}",
        f"false-positive rate (non-PII redactions / all redactions): {s.false_positive_rate:.3f}",
        f"messages without PII that lost anything: {s.negatives_hit}/{s.negatives}"
        f" ({s.negative_message_rate:.3f})",
        f"labelled values left (partly) readable: {s.leaked}",
        f"out of scope (unconfigured names, addresses, bank accounts): {s.out_of_scope_found}"
        f"/{s.out_of_scope_total} found",
    ]
    lines += [f"  missed   {m}" for m in s.misses]
    lines += [f"  false+   {m}" for m in s.false_positives]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("samples", nargs="?", type=Path, default=DEFAULT_SAMPLES)
    parser.add_argument("--repeat", type=int, default=100, help="timing passes over the samples")
    args = parser.parse_args()
    redactor, samples = load(args.samples)
    in_scope = [sample for sample in samples if not sample.out_of_scope]
    print(f"{len(samples)} samples ({len(in_scope)} in scope), {args.samples}")
    print(report(score(redactor, samples)))
    # Best of five: the figure is the code's cost, not the load other processes put on the box.
    passes = max(1, args.repeat // 5)
    best = min(time_per_message(redactor, in_scope, passes) for _ in range(5))
    chars = sum(len(sample.text) for sample in in_scope) / len(in_scope)
    print(f"redact(): {best * 1e6:.1f} µs per message (mean of {chars:.0f} chars, best of 5)")
    long_text = " ".join(sample.text for sample in in_scope[:20])
    long_sample = [Sample("mixed", long_text, ())]
    best_long = min(time_per_message(redactor, long_sample, passes) for _ in range(5))
    print(f"redact(): {best_long * 1e6:.1f} µs for one {len(long_text)}-char message (best of 5)")
    soup = "12 " * 3000
    started = time.perf_counter()
    redactor.redact(soup, PlaceholderMap())
    print(
        f"redact(): {(time.perf_counter() - started) * 1e3:.1f} ms for {len(soup)} chars of '12 12 12...'"
    )


if __name__ == "__main__":
    main()
