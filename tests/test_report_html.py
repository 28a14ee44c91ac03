"""The browsable report (reports/index.html) and the DVC plots of the training histories, built
from hand-made stage outputs in a scratch tree: every table, every figure and link resolving,
staged FCN side by side, edges thickened for display; rendered in headless Chromium when it is
installed."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation import segmentation
from pipeline.evaluation.edges import _edge_panel
from pipeline.evaluation.inference import Prediction
from pipeline.experiment import declared_experiments, experiment
from pipeline.metrics.edges import score_counts, write_edge_result
from pipeline.metrics.segmentation import segmentation_scores
from pipeline.params import load_params
from pipeline.report import plots
from pipeline.report.dvc_plots import write_history_plots
from pipeline.report.gallery import gallery
from pipeline.report.html import render
from pipeline.report.qualitative import (
    QUALITATIVE_FILE,
    Example,
    load_examples,
    save_examples,
    staged_chains,
)
from pipeline.report.tables import all_tables, report_blocks, to_markdown
from pipeline.runtime.fsutil import atomic_path

RAN = ["fcn32s", "fcn16s", "fcn8s", "deeplab-largefov", "pixelnet-edges", "pixelnet-normals"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path: Path, color: tuple[int, int, int], size=(160, 100)) -> None:
    """A stand-in for another stage's figure (the report links it; it does not draw it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _history(val_key: str, steps: int = 12) -> list[dict]:
    rows = [{"step": s, "loss": 2.0 / s, "time": 0.1 * s} for s in range(1, steps + 1)]
    rows.insert(5, {"step": 5, "resumed": True})
    for s in (6, 12):
        rows.append({"step": s, "val_pixel_acc": 0.5 + s / 100, val_key: s / 20})
    return rows


def _edge_result(seed: int):
    rng = np.random.default_rng(seed)
    thresholds = np.linspace(0.01, 0.99, 9)
    counts = np.empty((2, 4, 9))
    for i in range(2):
        hits = np.sort(rng.integers(10, 90, 9))[::-1]
        counts[i] = [hits, np.full(9, 100), hits, hits + np.arange(9) * 8 + 5]
    return score_counts(["a", "b"], counts, thresholds)


def build_tree(root: Path) -> tuple[dict, list[str]]:
    """The outputs of every stage before `report`, hand-made: metrics, histories, figures."""
    params = load_params()
    declared = {n: experiment(params, n) for n in declared_experiments(params)}
    metrics, figures = root / "metrics", root / "reports" / "figures"
    metrics.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    label = np.zeros((40, 60), np.uint8)
    label[10:30, 20:40] = 15
    for i, name in enumerate(RAN):
        task = declared[name].get("task", "segmentation")
        val_key = {"edges": "val_ods", "normals": "val_mean"}.get(task, "val_mean_iu")
        (root / "models" / name).mkdir(parents=True)
        (root / "models" / name / "history.json").write_text(json.dumps(_history(val_key)))
        _png(root / "models" / name / "curves.png", (200, 220, 255))
        scores = {"pixel_acc": 0.6, "mean_acc": 0.5, "mean_iu": 0.3 + i / 100, "fw_iu": 0.45}
        if task == "edges":
            scores = {"ods": 0.61, "ois": 0.63, "ap": 0.52}
        elif task == "normals":
            scores = {"mean": 25.0, "median": 20.0, "within_11_25": 30.0}
        (metrics / f"{name}.json").write_text(json.dumps(scores))
        if task == "segmentation":
            _png(figures / name / "predictions.png", (255, 230, 200))
            _png(figures / name / "confusion.png", (230, 240, 255))
            pred = np.where(label > 0, 15 if i else 0, 0).astype(np.uint8)  # each model differs
            examples = [Example(f"img{k}", image, label, pred) for k in range(2)]
            save_examples(examples, figures / name / "qualitative.npz")
        elif task == "edges":
            _png(figures / name / "edges_examples.png", (240, 240, 240))
            _png(figures / name / "edges_pr_curve.png", (250, 250, 230))
            write_edge_result(_edge_result(1), figures / name / "edges.json")
        else:
            _png(figures / name / "predictions.png", (220, 200, 255))
    _png(figures / "deeplab-largefov-crf" / "predictions.png", (255, 210, 210))
    _png(figures / "deeplab-largefov-crf" / "trimap.png", (210, 255, 210))
    crf = {"before": {"mean_iu": 0.4}, "after": {"mean_iu": 0.465}, "crf_params": {"w1": 5.0}}
    (metrics / "deeplab-largefov-crf.json").write_text(json.dumps(crf))
    (metrics / "canny.json").write_text(json.dumps({"ods": 0.55, "ois": 0.57, "ap": 0.41}))
    _png(figures / "canny" / "canny_examples.png", (235, 235, 235))
    write_edge_result(_edge_result(2), figures / "canny" / "canny.json")
    factors = {str(f): {"mean_iu": 0.9} for f in (128, 64, 32, 16, 8, 4)}
    bound = {"num_images": 3, "factors": factors}
    upper = {"source": "labels", "default_method": "majority", "methods": {"majority": bound}}
    (metrics / "upper_bound.json").write_text(json.dumps(upper))
    return declared, RAN


def write_report(root: Path, declared: dict, ran: list[str]) -> Path:
    """What stages/report.py does, on the scratch tree."""
    reports = root / "reports"
    blocks = report_blocks(root / "metrics", declared, ran, ["deeplab-largefov"], "test", {})
    (reports / "results.md").write_text(to_markdown(blocks))
    write_history_plots(root / "models", ran, reports / "plots")
    with atomic_path(reports / "assets") as assets:
        assets.mkdir(parents=True)
        sections = gallery(root, declared, ran, assets)
    (reports / "index.html").write_text(render(blocks, sections))
    return reports / "index.html"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    declared, ran = build_tree(root)
    return root, write_report(root, declared, ran)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.hrefs, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.imgs.append(attrs["src"])
        if tag == "a":
            self.hrefs.append(attrs["href"])


def _refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


def test_every_image_and_link_resolves(report):
    root, index = report
    refs = _refs(index.read_text())
    assert len(refs.imgs) >= 15
    for src in refs.imgs + [h for h in refs.hrefs if not h.startswith("#")]:
        assert not re.match(r"^[a-z]+:|^/", src), f"{src}: not relative"
        assert (index.parent / src).is_file(), f"{src}: broken"
    for src in refs.imgs:
        assert (index.parent / src).read_bytes()[:8] == PNG_MAGIC, src
    for href in refs.hrefs:
        if href.startswith("#"):
            assert href[1:] in refs.ids, f"{href}: no such anchor"
    # the figures of other stages are linked where they are, nothing outside reports/
    assert "figures/deeplab-largefov-crf/predictions.png" in refs.imgs
    assert "assets/fcn32s/curves.png" in refs.imgs


def test_every_reference_table_and_every_experiment_appears(report):
    _, index = report
    html = index.read_text()
    ids = _refs(html).ids
    for table_id in all_tables():
        assert table_id in ids, f"table {table_id} missing from index.html"
        assert f'href="#{table_id}"' in html  # in the contents
    for name in RAN + ["canny"]:
        assert any(i.endswith(name) for i in ids), name
    # ours beside the paper's, the same cells as results.md
    assert "<td>DeepLab-LargeFOV</td><td><code>deeplab-largefov</code></td><td>40.00</td>" in html
    assert '<td class="paper">62.25</td><td class="paper">67.64</td>' in html
    assert "DCNN+CRF: mean IU 40.00 &#8594; 46.50" in html  # ASCII whatever the locale


def test_staged_fcn_side_by_side_and_edge_comparison(report):
    root, index = report
    html = index.read_text()
    staged = root / "reports" / "assets" / "fcn8s" / "staged.png"
    assert 'src="assets/fcn8s/staged.png"' in html
    assert "ground truth | <code>fcn32s</code> | <code>fcn16s</code> | <code>fcn8s</code>" in html
    width = Image.open(staged).size[0]
    single = (root / "single.png").as_posix()
    plots.prediction_grid([(np.zeros((40, 60, 3), np.uint8),) * 3], single, ("a", "b", "c"))
    assert width > 1.4 * Image.open(single).size[0]  # five panels a row, not three
    assert 'src="assets/edges_pr.png"' in html  # pixelnet-edges and Canny on one PR plot


def test_evaluate_keeps_the_grid_arrays_the_report_reads(tmp_path):
    image = np.full((20, 30, 3), 7, np.uint8)
    label = np.zeros((20, 30), np.uint8)
    label[5:15, 5:25] = 3
    pred = np.roll(label, 2, axis=1)
    kept = [Prediction(f"im{i}", image, label, None, pred) for i in range(2)]
    hist = np.zeros((21, 21), np.int64)
    hist[0, 0], hist[3, 3] = 10, 5
    classes = [f"c{i}" for i in range(21)]
    segmentation.write_outputs(segmentation_scores(hist), hist, kept, classes, tmp_path)
    back = load_examples(tmp_path / QUALITATIVE_FILE)
    assert [e.id for e in back] == ["im0", "im1"]
    np.testing.assert_array_equal(back[1].pred, pred)
    np.testing.assert_array_equal(back[0].image, image)


def test_staged_chains_follow_init_across_models_only():
    experiments = {
        "a32": {"model": "fcn32s", "dataset": "voc", "init": "backbone"},
        "a16": {"model": "fcn16s", "dataset": "voc", "init": "a32"},
        "a8": {"model": "fcn8s", "dataset": "voc", "init": "a16"},
        "masked": {"model": "fcn32s", "dataset": "voc", "init": "a32"},  # same weights
        "other": {"model": "fcn16s", "dataset": "nyud", "init": "a32"},  # other data
    }
    assert staged_chains(experiments, list(experiments)) == [["a32", "a16", "a8"]]
    assert staged_chains(experiments, ["a32", "a8"]) == []


def test_histories_become_uniform_dvc_plot_tables(report):
    root, _ = report
    folder = root / "reports" / "plots"
    for name, main in (("fcn8s", "val_mean_iu"), ("pixelnet-edges", "val_ods")):
        loss = list(csv.DictReader((folder / name / "loss.csv").open()))
        assert [r["step"] for r in loss] == [str(s) for s in range(1, 13)]  # no resume row
        val = list(csv.reader((folder / name / "val.csv").open()))
        assert val[0] == ["step", "val_pixel_acc", main]  # DVC draws the last column
        assert [r[0] for r in val[1:]] == ["6", "12"]


def test_edges_are_thickened_for_display():
    line = np.zeros((321, 481))
    line[160, :] = 1.0  # a one-pixel NMS edge on a BSDS-sized map
    wide = plots.thicken_edges(line)
    assert wide[:, 240].sum() >= 5 and wide.max() == 1.0
    panel = _edge_panel(line)  # what the evaluate stage's edge grid draws
    assert (panel[:, 240, 0] < 128).sum() >= 5
    small = np.zeros((64, 64))
    small[32] = 1.0
    assert plots.thicken_edges(small).sum() == 64  # a map the grid does not shrink stays thin


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHECK = """<script>
window.addEventListener("load", () => {
  const broken = [...document.images]
    .filter((img) => !img.complete || img.naturalWidth === 0)
    .map((img) => img.getAttribute("src"));
  document.body.setAttribute("data-images", document.images.length);
  document.body.setAttribute("data-broken", JSON.stringify(broken));
});
</script>"""


def test_renders_in_headless_chromium_without_broken_images(report):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless check skipped: no chromium on PATH (apt-get install chromium)")
    _, index = report
    page = index.read_text().replace(' loading="lazy"', "")  # load every image now
    control = '<img src="missing-on-purpose.png" alt="control">'  # proves the check can fail
    check = index.parent / "check.html"
    check.write_text(page.replace("</body>", f"{control}\n{CHECK}\n</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    dom = subprocess.run(
        [browser, *flags, "--virtual-time-budget=5000", "--dump-dom", check.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    found = re.search(r'data-images="(\d+)" data-broken="([^"]*)"', dom)
    assert found, "the page's check did not run"
    broken = json.loads(found[2].replace("&quot;", '"'))
    assert int(found[1]) == len(_refs(page).imgs) + 1
    assert broken == ["missing-on-purpose.png"]
