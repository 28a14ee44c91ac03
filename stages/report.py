"""DVC stage `report`: every paper table with our numbers beside the paper's, as
reports/results.md and, with every experiment's figures, as the browsable reports/index.html
(figures linked from reports/figures/ and reports/assets/); the training histories as DVC plots
(reports/plots/<experiment>/{loss,val}.csv: `dvc plots show`)."""

from pipeline.experiment import declared_experiments, experiment, run_names
from pipeline.params import load_params, repo_root
from pipeline.report.dvc_plots import write_history_plots
from pipeline.report.gallery import ASSETS, gallery
from pipeline.report.html import render
from pipeline.report.tables import report_blocks, to_markdown
from pipeline.runtime.console import announce_limits, limits_banner, run_stage
from pipeline.runtime.fsutil import atomic_path, write_text_atomic
from pipeline.sweeps.spec import active_sweeps


def main() -> None:
    params = load_params()
    root = repo_root()
    reports = root / "reports"
    declared = {name: experiment(params, name) for name in declared_experiments(params)}
    ran = run_names(params)
    datasets = sorted({declared[n]["dataset"] for n in ran})
    sources = {d: params.get(f"data.{d}.source", "?") for d in datasets}
    provenance = f"profile `{params.profile}`, model width {params.get('model.width')}"
    if "builtin" in sources.values():
        provenance += (
            "; built-in synthetic data: our numbers show the pipeline works, they are not "
            "comparable with the paper's"
        )
    limits = announce_limits(params)
    if limits:
        provenance = f"**{limits_banner(limits)}**; " + provenance
    sweeps = active_sweeps(params)
    blocks = report_blocks(
        root / "metrics", declared, ran, params.get("run.crf", []), provenance, sources, sweeps
    )
    text = to_markdown(blocks)
    write_text_atomic(reports / "results.md", text)
    write_history_plots(root / "models", ran, reports / "plots")
    with atomic_path(reports / ASSETS) as assets:
        assets.mkdir(parents=True)
        sections = gallery(root, declared, ran, assets, sweeps)
    write_text_atomic(reports / "index.html", render(blocks, sections))
    print(text)
    print(f"browsable report: {reports / 'index.html'}")


if __name__ == "__main__":
    run_stage(main)
