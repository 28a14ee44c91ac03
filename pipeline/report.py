"""Result tables: our numbers beside the papers' (kept as data in pipeline/reference/).

Every table says which dataset and profile produced our column, so a tiny-profile run on the
built-in data is never mistaken for a reproduction of the paper.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import yaml

METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
HEADERS = ("pixel acc.", "mean acc.", "mean IU", "f.w. IU")


def reference(name: str) -> dict:
    """Published numbers from ``pipeline/reference/<name>.yaml``."""
    text = resources.files("pipeline.reference").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def fcn_table(ours: dict[str, dict], table: dict, provenance: str) -> str:
    """Markdown: one row per model of ours that the paper table also has (or that we ran)."""
    lines = [
        f"### {table['title']}",
        "",
        f"Ours: {provenance}. Paper: {table['source']}.",
        "",
        "| model | "
        + " | ".join(f"{h} (ours)" for h in HEADERS)
        + " | "
        + " | ".join(f"{h} (paper)" for h in HEADERS)
        + " |",
        "|---" * (1 + 2 * len(METRICS)) + "|",
    ]
    for model, metrics in ours.items():
        paper = table["rows"].get(model, {})
        ours_cells = [_fmt(100 * metrics[m]) if m in metrics else "n/a" for m in METRICS]
        paper_cells = [_fmt(paper.get(m)) for m in METRICS]
        note = f" {paper['note']}" if paper.get("note") else ""
        lines.append(f"| {model}{note} | " + " | ".join(ours_cells + paper_cells) + " |")
    return "\n".join(lines) + "\n"


def load_metrics(metrics_dir: Path, keys: list[str]) -> dict[str, dict]:
    return {k: json.loads((Path(metrics_dir) / f"{k}.json").read_text()) for k in keys}
