"""Result tables: our numbers beside the papers' (published numbers kept as data in
``pipeline/report/reference/*.yaml``).

Each reference table lists its columns and the paper's rows; each experiment in params.yaml says
which table rows it reproduces (``tables: {table: row}``). The report joins the two, so adding an
experiment or a table is a params/data edit, not code. Every table says which profile, dataset
and width produced our column, so a tiny run on built-in data is never taken for a reproduction.

The report is built once as blocks (:class:`Heading`, :class:`Paragraph`, :class:`Table`: text in
inline markdown) that both reports/results.md (:func:`to_markdown`) and reports/index.html
(``pipeline.report.html``) render, so the two never disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pipeline.models import build_model, describe
from pipeline.params import parse_yaml

REFERENCES = ("fcn", "deeplab", "pixelnet")


@dataclass(frozen=True)
class Column:
    header: str
    source: str  # metrics: metrics/<exp>.json | crf: metrics/<exp>-crf.json | describe: the model
    scale: float = 100.0  # ours -> the paper's unit
    digits: int = 1
    field: str | None = None  # the key in our source, when it differs from the column's


COLUMNS: dict[str, Column] = {
    "pixel_acc": Column("pixel acc.", "metrics"),
    "mean_acc": Column("mean acc.", "metrics"),
    "mean_iu": Column("mean IU", "metrics"),
    "fw_iu": Column("f.w. IU", "metrics"),
    "mean_iu_fg": Column("mean IU (no bg)", "metrics"),
    "geo_label_pixel_acc": Column("geom. acc.", "metrics"),  # SIFT Flow's geometric head
    "before": Column("mean IU DCNN", "crf", digits=2),
    "after": Column("mean IU DCNN+CRF", "crf", digits=2),
    "conv_layers": Column("conv. layers", "describe", 1, 0),
    # the papers count the net without its (fixed, bilinear) upsampling deconvolution
    "parameters": Column("parameters (M)", "describe", 1e-6, 1, "parameters_excluding_upsampling"),
    "rf_size": Column("rf size", "describe", 1, 0),
    "max_stride": Column("max stride", "describe", 1, 0),
    "ods": Column("ODS", "metrics", 1, 3),
    "ois": Column("OIS", "metrics", 1, 3),
    "ap": Column("AP", "metrics", 1, 3),
    "mean": Column("mean angle", "metrics", 1, 1),
    "median": Column("median angle", "metrics", 1, 1),
    "rmse": Column("RMSE angle", "metrics", 1, 1),
    "within_11_25": Column("% < 11.25", "metrics", 1, 1),
    "within_22_5": Column("% < 22.5", "metrics", 1, 1),
    "within_30": Column("% < 30", "metrics", 1, 1),
}


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 1


@dataclass(frozen=True)
class Paragraph:
    text: str  # inline markdown: `code`, **bold**, [text](relative link)


@dataclass(frozen=True)
class Table:
    """One titled table; every cell and the caption in inline markdown."""

    anchor: str  # a stable id: the reference table's id, ``sweep-<name>``
    title: str
    caption: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    level: int = 3


Block = Heading | Paragraph | Table


def to_markdown(blocks: list[Block]) -> str:
    """results.md: every block, a blank line between them."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, Paragraph):
            parts.append(f"{block.text}\n")
        else:
            lines = [f"{'#' * block.level} {block.title}", "", block.caption, ""]
            lines.append("| " + " | ".join(block.headers) + " |")
            lines.append("|" + "---|" * len(block.headers))
            lines += ["| " + " | ".join(row) + " |" for row in block.rows]
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def reference(name: str) -> dict:
    """Published numbers from ``pipeline/report/reference/<name>.yaml`` ({} if that file is
    absent)."""
    path = resources.files("pipeline.report.reference").joinpath(f"{name}.yaml")
    return parse_yaml(path.read_text()) if path.is_file() else {}


def all_tables() -> dict[str, dict]:
    """Every reference table, by id, in file order (FCN, DeepLab, PixelNet)."""
    tables: dict[str, dict] = {}
    for name in REFERENCES:
        tables.update(reference(name))
    return tables


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _describe(model: str) -> dict:
    """Architecture facts of ``model`` at full width, from the module graph (no memory used)."""
    import torch

    with torch.device("meta"):
        return describe(build_model(model, 21))


class Ours:
    """Our value of a column for an experiment, read from the stage outputs."""

    def __init__(self, metrics_dir: Path, experiments: dict[str, dict], ran: set[str]):
        self.metrics_dir, self.experiments, self.ran = Path(metrics_dir), experiments, ran
        self._cache: dict[tuple[str, str], dict | None] = {}

    def _load(self, exp: str, source: str) -> dict | None:
        key = (exp, source)
        if key not in self._cache:
            if exp not in self.experiments:  # a baseline stage's metrics (reference `ours:`)
                path = self.metrics_dir / f"{exp}.json"
                self._cache[key] = json.loads(path.read_text()) if path.is_file() else None
            elif source == "describe":
                self._cache[key] = _describe(self.experiments[exp]["model"])
            else:
                suffix = "-crf" if source == "crf" else ""
                path = self.metrics_dir / f"{exp}{suffix}.json"
                ran = exp in self.ran and path.is_file()
                self._cache[key] = json.loads(path.read_text()) if ran else None
        return self._cache[key]

    def value(self, exp: str, column: str) -> float | None:
        col = COLUMNS[column]
        data = self._load(exp, col.source)
        if data is None:
            return None
        field = col.field or column
        raw = data.get(field) if col.source != "crf" else data.get(field, {}).get("mean_iu")
        return None if raw is None else raw * col.scale


def _dataset_note(table: dict, entry: dict) -> str:
    """A plain mark when our experiment ran on another dataset than the paper's table."""
    wanted, ours = table.get("datasets"), entry.get("dataset")
    if not wanted or not ours or ours in wanted:
        return ""
    return f" **(on `{ours}`, the paper's is `{'`/`'.join(wanted)}`: not comparable)**"


def _data_used(by_row: dict[str, list[str]], ours: Ours, sources: dict[str, str]) -> str:
    """The datasets this table's experiments (those that ran) read, with where each came from."""
    used = sorted(
        {
            ours.experiments[e]["dataset"]
            for exps in by_row.values()
            for e in exps
            if e in ours.experiments and e in ours.ran and ours.experiments[e].get("dataset")
        }
    )
    if not used:
        return ""
    return "; data: " + ", ".join(f"{d} (`{sources[d]}`)" if d in sources else d for d in used)


def table_block(
    table_id: str, table: dict, ours: Ours, provenance: str, sources: dict[str, str] | None = None
) -> Table:
    """One reference table: a row per paper row (and per extra row of ours), ours | paper.

    The provenance line names the datasets this table's experiments read (``sources``: dataset
    -> builtin / url / local); a row whose experiment read another dataset than the paper's
    (``datasets`` of the reference table) says so in bold."""
    columns = table["columns"]
    by_row: dict[str, list[str]] = {}
    for exp, entry in ours.experiments.items():
        row = (entry.get("tables") or {}).get(table_id)
        if row is not None:
            by_row.setdefault(row, []).append(exp)
    for row, paper in table["rows"].items():
        if (paper or {}).get("ours") and row not in by_row:
            by_row[row] = [paper["ours"]]  # a baseline evaluated by its own stage (e.g. Canny)
    rows = list(table["rows"]) + [r for r in by_row if r not in table["rows"]]
    headers = [f"{COLUMNS[c].header} (ours)" for c in columns]
    headers += [f"{COLUMNS[c].header} (paper)" for c in columns]
    caption = (
        f"Ours: {provenance}{_data_used(by_row, ours, sources or {})}. Paper: {table['source']}."
    )
    out = Table(table_id, table["title"], caption, ["paper row", "our experiment", *headers])
    for row in rows:
        paper = table["rows"].get(row, {}) or {}
        name = paper.get("paper_name", row) + (f" {paper['note']}" if paper.get("note") else "")
        for exp in by_row.get(row, [None]):
            if exp is None:
                label, cells = "not declared", ["n/a"] * len(columns)
            else:
                if exp in ours.experiments:
                    label = f"`{exp}`" + ("" if exp in ours.ran else " (not in `run`)")
                    label += _dataset_note(table, ours.experiments[exp])
                else:
                    label = f"`{exp}` (baseline)"
                cells = [_fmt(ours.value(exp, c), COLUMNS[c].digits) for c in columns]
            cells += [_fmt(paper.get(c), COLUMNS[c].digits) for c in columns]
            out.rows.append([name, label, *cells])
    return out


def table_markdown(
    table_id: str, table: dict, ours: Ours, provenance: str, sources: dict[str, str] | None = None
) -> str:
    """:func:`table_block` as markdown."""
    return to_markdown([table_block(table_id, table, ours, provenance, sources)])


def crf_parameters_line(ours: Ours, experiments: list[str]) -> str:
    """The searched CRF parameters of each refined experiment (from its crf metrics)."""
    parts = []
    for exp in experiments:
        data = ours._load(exp, "crf")
        if data and data.get("crf_params"):
            values = ", ".join(f"{k}={v:g}" for k, v in data["crf_params"].items())
            parts.append(
                f"`{exp}`: {values} (trimap: [figures/{exp}-crf/trimap.png]"
                f"(figures/{exp}-crf/trimap.png))"
            )
    return (
        ("CRF parameters searched on val (`crf_search` stage): " + "; ".join(parts))
        if parts
        else ""
    )


def upper_bound_block(result: dict, paper: dict) -> Table:
    """FCN 6.3: every resampling variant we computed, beside the paper's row."""
    factors = list(paper["factors"])
    caption = (
        f"Ours: {result['source']}, {next(iter(result['methods'].values()))['num_images']} "
        f"images (stage `upper_bound`). Paper: {paper['source']}. Default variant: "
        f"`{result['default_method']}`."
    )
    out = Table("fcn_upper_bound", paper["title"], caption, ["variant"])
    out.headers.extend(f"factor {f}" for f in factors)
    for method, scores in result["methods"].items():
        cells = []
        for f in factors:
            s = scores["factors"].get(str(f)) or scores["factors"].get(f)
            cells.append(_fmt(100 * s["mean_iu"] if s else None, 2))
        mark = " (default)" if method == result["default_method"] else ""
        out.rows.append([f"{method}{mark}", *cells])
    out.rows.append(["paper", *(_fmt(paper["factors"][f], 1) for f in factors)])
    return out


def upper_bound_markdown(result: dict, paper: dict) -> str:
    """:func:`upper_bound_block` as markdown."""
    return to_markdown([upper_bound_block(result, paper)])


PERCENT_METRICS = (
    "val_mean_iu", "val_pixel_acc", "val_mean_acc", "val_fw_iu", "val_ods", "val_ois", "val_ap",
)  # fmt: skip


def sweep_block(result: dict) -> Table:
    """One sweep: its trials (values, status, steps, final and best metric), the winner first
    in bold. Percent for the [0, 1] scores, degrees as they are."""
    metric = result["metric"]
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    keys = list(result["rows"][0]["values"]) if result["rows"] else []
    caption = (
        f"Best {metric} {result['best'] * scale:.1f} ({result['best_trial']}: "
        + ", ".join(f"{k} = {_value(v)}" for k, v in result["best_values"].items())
        + f"); {result['trials']} trials: {result['finished']} finished, "
        f"{result['stopped_early']} stopped early, {result['failed']} failed; "
        f"{result['trial_steps']} optimizer steps in all. Figures and best.yaml: "
        f"`sweeps/{result['sweep']}/`."
    )
    title = f"Sweep `{result['sweep']}` ({result['experiment']}, {result['scheduler']})"
    headers = ["trial", *keys, "status", "steps", f"final {metric}", "best"]
    out = Table(f"sweep-{result['sweep']}", title, caption, headers, level=2)
    for row in result["rows"]:
        mark = "**" if row["trial"] == result["best_trial"] else ""
        cells = [f"{mark}{row['trial']}{mark}", *(_value(row["values"][k]) for k in keys)]
        cells += [row["status"], str(row["steps"])]
        cells += [_fmt(_scaled(row["final"], scale), 1), _fmt(_scaled(row["best"], scale), 1)]
        out.rows.append(cells)
    return out


def sweep_markdown(result: dict) -> str:
    """:func:`sweep_block` as markdown."""
    return to_markdown([sweep_block(result)])


def _value(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _scaled(v, scale: float):
    return None if v is None or v != v else v * scale


def report_blocks(
    metrics_dir: Path,
    experiments: dict[str, dict],
    ran: list[str],
    crf: list[str],
    provenance: str,
    sources: dict[str, str] | None = None,
    sweeps: list[str] = (),
) -> list[Block]:
    """Every reference table that has at least one declared experiment, then a table per sweep
    of the active set: what results.md and index.html both show."""
    ours = Ours(metrics_dir, experiments, set(ran))
    blocks: list[Block] = [
        Heading("Results"),
        Paragraph("Generated by `dvc repro` (stage `report`); numbers in percent."),
    ]
    for table_id, table in all_tables().items():
        if table_id == "fcn_upper_bound":
            path = Path(metrics_dir) / "upper_bound.json"
            if path.is_file():
                blocks.append(upper_bound_block(json.loads(path.read_text()), table))
        elif any(table_id in (e.get("tables") or {}) for e in experiments.values()):
            blocks.append(table_block(table_id, table, ours, provenance, sources))
            if table_id == "deeplab_crf":
                line = crf_parameters_line(ours, crf)
                blocks += [Paragraph(line)] if line else []
    for name in sweeps:
        path = Path(metrics_dir) / f"sweep-{name}.json"
        if path.is_file():
            blocks.append(sweep_block(json.loads(path.read_text())))
    blocks.append(
        Paragraph(
            "Rows marked (not in `run`) are declared in params.yaml `experiments.all`: set "
            "`run: *all` to build them. Figures: `reports/figures/<experiment>/` (predictions, "
            "confusion matrix), `reports/figures/<experiment>-crf/` (trimap, DCNN vs DCNN+CRF); "
            "training curves: `models/<experiment>/curves.png`; every run is in MLflow "
            "(`make mlflow-ui`)."
        )
    )
    return blocks


def build_report(
    metrics_dir: Path,
    experiments: dict[str, dict],
    ran: list[str],
    crf: list[str],
    provenance: str,
    sources: dict[str, str] | None = None,
    sweeps: list[str] = (),
) -> str:
    """reports/results.md: :func:`report_blocks` as markdown."""
    return to_markdown(
        report_blocks(metrics_dir, experiments, ran, crf, provenance, sources, sweeps)
    )
