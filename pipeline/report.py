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


def deeplab_table(
    ours: dict[str, dict], table: dict, provenance: str, figures: str | None = None
) -> str:
    """Markdown: mean IU before / after the CRF, ours (crf stage metrics) beside the paper's.

    ``ours`` maps a model key to its ``metrics/<key>-crf.json``; every paper row is listed
    (ours "n/a" where we did not run that variant), ours first.
    """
    lines = [
        f"### {table['title']}",
        "",
        f"Ours: {provenance}. Paper: {table['source']}.",
        "",
        "| model | mean IU DCNN (ours) | mean IU DCNN+CRF (ours) | CRF gain (ours) "
        "| mean IU DCNN (paper) | mean IU DCNN+CRF (paper) | CRF gain (paper) |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = list(ours) + [k for k in table["rows"] if k not in ours]
    for key in keys:
        paper = table["rows"].get(key, {})
        mine = ours.get(key)
        before = 100 * mine["before"]["mean_iu"] if mine else None
        after = 100 * mine["after"]["mean_iu"] if mine else None
        gain = after - before if mine else None
        p_before, p_after = paper.get("before"), paper.get("after")
        p_gain = p_after - p_before if p_before is not None and p_after is not None else None
        name = f"{key} ({paper['paper_name']})" if paper.get("paper_name") else key
        cells = [_fmt(before), _fmt(after), _fmt(gain)]
        cells += [_fmt2(p_before), _fmt2(p_after), _fmt2(p_gain)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if ours:
        key = next(iter(ours))
        params = ours[key].get("crf_params", {})
        if params:
            searched = ", ".join(f"{k}={v:g}" for k, v in params.items())
            lines += ["", f"CRF parameters (searched on val, `crf_search` stage): {searched}."]
        if figures:
            lines += ["", f"Trimap (Figure 5): [{figures}/trimap.png]({figures}/trimap.png)."]
    return "\n".join(lines) + "\n"


def _fmt2(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"
