"""The figures of the browsable report, one section per experiment (then the edge detectors
compared, the baselines, the sweeps), with links relative to ``reports/``.

The evaluate, crf and edges_baseline stages already write their figures under
``reports/figures/``, beside ``reports/index.html``: the page links them where they are. What
lives outside ``reports/`` (training curves in ``models/``, sweep figures in ``sweeps/``) and what
only the report can draw (staged FCN predictions side by side, every edge detector on one PR
plot) goes to ``reports/assets/``. The ``reports/`` folder is then the whole site: no figure is
duplicated in the page, which stays small however many experiments run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.metrics.edges import plot_pr_curve, read_edge_result
from pipeline.report.qualitative import chain_grid, staged_chains
from pipeline.report.tables import COLUMNS, all_tables

ASSETS = "assets"  # the report's own figures, under reports/


@dataclass(frozen=True)
class Figure:
    src: str  # relative to reports/
    caption: str  # inline markdown


@dataclass
class Section:
    anchor: str
    title: str
    notes: list[str] = field(default_factory=list)  # inline markdown paragraphs
    figures: list[Figure] = field(default_factory=list)


QUALITATIVE_CAPTIONS = {
    "segmentation": "first val images: image | ground truth | prediction",
    "edges": "first val images: image | consensus ground truth | prediction after NMS "
    "(one-pixel edges thickened for display)",
    "normals": "first val images: image | true normals | predicted normals | angular error",
}
#: reports/figures/<experiment>/ files in display order, with their captions
KNOWN_FIGURES = {
    "edges_examples.png": QUALITATIVE_CAPTIONS["edges"],
    "edges_pr_curve.png": "precision / recall over thresholds (BSDS benchmark), ODS marked",
    "confusion.png": "confusion matrix (rows: truth, normalised; classes present only)",
}
CRF_FIGURES = {
    "predictions.png": "before | after CRF: image | ground truth | DCNN | DCNN+CRF",
    "trimap.png": "trimap: pixel accuracy and mean IU within a band around object boundaries, "
    "DCNN vs DCNN+CRF, by band width",
}


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def metrics_line(metrics: dict) -> str:
    """The paper columns this metrics file holds, in the paper's units."""
    parts = []
    for key, col in COLUMNS.items():
        value = metrics.get(col.field or key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if col.source == "metrics" and number:
            parts.append(f"{col.header} {value * col.scale:.{col.digits}f}")
    line = " · ".join(parts)
    if metrics.get("limits"):
        limits = ", ".join(f"{k}={v}" for k, v in metrics["limits"].items())
        line += f" **(trial run: {limits})**"
    return line


def _crf_line(crf: dict) -> str:
    before, after = crf["before"]["mean_iu"], crf["after"]["mean_iu"]
    return f"DCNN+CRF: mean IU {100 * before:.2f} → {100 * after:.2f}"


class Gallery:
    """Builds the sections; copies and draws the report's own figures into ``assets``."""

    def __init__(self, root: Path, assets: Path):
        self.root, self.assets = Path(root), Path(assets)
        self.figures = self.root / "reports" / "figures"

    def _linked(self, path: Path, caption: str) -> Figure:
        return Figure(path.relative_to(self.root / "reports").as_posix(), caption)

    def _asset(self, relative: str) -> tuple[Path, Figure]:
        """Where to write an asset, and the figure that will show it (caption filled later)."""
        target = self.assets / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target, Figure(f"{ASSETS}/{relative}", "")

    def _copied(self, source: Path, relative: str, caption: str) -> Figure:
        target, figure = self._asset(relative)
        shutil.copyfile(source, target)
        return Figure(figure.src, caption)

    def _folder_figures(self, folder: Path, known: dict[str, str]) -> list[Figure]:
        """The known figures of ``folder`` in order, then any other PNG there (by name)."""
        out = [self._linked(folder / n, c) for n, c in known.items() if (folder / n).is_file()]
        rest = sorted(p for p in folder.glob("*.png") if p.name not in known)
        return out + [self._linked(p, f"`{p.name}`") for p in rest]

    def experiment(self, name: str, entry: dict, staged: list[str] | None) -> Section:
        task = entry.get("task", "segmentation")
        section = Section(f"exp-{name}", name)
        line = f"`{entry.get('model', '?')}` on `{entry.get('dataset', '?')}` ({task})"
        init = entry.get("init")
        section.notes.append(line + (f", initialised from `{init}`" if init else "") + ".")
        metrics = _load_json(self.root / "metrics" / f"{name}.json")
        if metrics:
            section.notes.append(f"{metrics_line(metrics)} (`metrics/{name}.json`).")
        crf = _load_json(self.root / "metrics" / f"{name}-crf.json")
        if crf:
            section.notes.append(f"{_crf_line(crf)} (`metrics/{name}-crf.json`).")
        curves = self.root / "models" / name / "curves.png"
        if curves.is_file():
            caption = (
                f"training loss and validation metric by step (`models/{name}/history.json`; "
                f"DVC plots: `reports/plots/{name}/`)"
            )
            section.figures.append(self._copied(curves, f"{name}/curves.png", caption))
        if staged:
            target, figure = self._asset(f"{name}/staged.png")
            if chain_grid(staged, self.figures, target):
                caption = "staged training, same val images: image | ground truth | " + " | ".join(
                    f"`{n}`" for n in staged
                )
                section.figures.append(Figure(figure.src, caption))
        folder = self.figures / name
        known = {"predictions.png": QUALITATIVE_CAPTIONS.get(task, "predictions"), **KNOWN_FIGURES}
        section.figures += self._folder_figures(folder, known)
        section.figures += self._folder_figures(self.figures / f"{name}-crf", CRF_FIGURES)
        if not (metrics or section.figures):
            section.notes.append("No outputs yet (`dvc repro` builds them).")
        return section

    def edge_detectors(self, edge_experiments: list[str], baselines: list[str]) -> Section | None:
        """Every edge model and baseline on one PR plot (each evaluated by the same benchmark)."""
        results = {}
        for name in edge_experiments:
            path = self.figures / name / "edges.json"
            if path.is_file():
                results[name] = read_edge_result(path)
        for name in baselines:
            path = self.figures / name / f"{name}.json"
            if path.is_file():
                results[name] = read_edge_result(path)
        if len(results) < 2:
            return None
        target, figure = self._asset("edges_pr.png")
        plot_pr_curve(results, target)
        caption = "every edge detector through the same BSDS benchmark (ODS F in the legend)"
        return Section("edges", "Edge detectors compared", [], [Figure(figure.src, caption)])

    def baseline(self, name: str) -> Section | None:
        folder = self.figures / name
        metrics = _load_json(self.root / "metrics" / f"{name}.json")
        if not folder.is_dir() and not metrics:
            return None
        section = Section(f"baseline-{name}", f"{name} (baseline)")
        if metrics:
            section.notes.append(f"{metrics_line(metrics)} (`metrics/{name}.json`).")
        if folder.is_dir():
            known = {
                f"{name}_examples.png": QUALITATIVE_CAPTIONS["edges"],
                f"{name}_pr_curve.png": KNOWN_FIGURES["edges_pr_curve.png"],
            }
            section.figures += self._folder_figures(folder, known)
        return section

    def sweep(self, name: str) -> Section | None:
        folder = self.root / "sweeps" / name
        pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if not pngs:
            return None
        section = Section(f"sweep-{name}-figures", f"Sweep {name}")
        section.notes.append(f"Trials: [the sweep's table](#sweep-{name}); `sweeps/{name}/`.")
        captions = {
            "curves.png": "validation metric by step, one line per trial (dashed: stopped early)",
            "values.png": "each trial's best metric against each swept value",
        }
        for p in pngs:
            caption = captions.get(p.name, f"`{p.name}`")
            section.figures.append(self._copied(p, f"sweep-{name}/{p.name}", caption))
        return section


def baselines() -> list[str]:
    """Baselines evaluated by their own stage (a reference row's ``ours:``, e.g. canny)."""
    found = []
    for table in all_tables().values():
        for row in (table.get("rows") or {}).values():
            name = (row or {}).get("ours")
            if name and name not in found:
                found.append(name)
    return found


def gallery(
    root: Path,
    experiments: dict[str, dict],
    ran: list[str],
    assets: Path,
    sweeps: list[str] = (),
) -> list[Section]:
    """Every section of the report's figures; the report's own figures written to ``assets``
    (a folder that becomes ``reports/assets``)."""
    g = Gallery(root, assets)
    last_of = {chain[-1]: chain for chain in staged_chains(experiments, ran)}
    sections = [g.experiment(n, experiments[n], last_of.get(n)) for n in ran if n in experiments]
    names = [b for b in baselines() if b not in experiments]
    edges = [n for n in ran if experiments.get(n, {}).get("task") == "edges"]
    sections.append(g.edge_detectors(edges, names))
    sections += [g.baseline(n) for n in names]
    sections += [g.sweep(n) for n in sweeps]
    return [s for s in sections if s is not None]
