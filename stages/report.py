"""DVC stage `report`: reports/results.md, every paper table with our numbers beside the paper's."""

from pipeline.experiment import declared_experiments, experiment, run_names
from pipeline.params import load_params, repo_root
from pipeline.report.tables import build_report
from pipeline.runtime.console import announce_limits, limits_banner, run_stage
from pipeline.runtime.fsutil import write_text_atomic
from pipeline.sweeps.spec import active_sweeps


def main() -> None:
    params = load_params()
    root = repo_root()
    declared = {name: experiment(params, name) for name in declared_experiments(params)}
    datasets = sorted({declared[n]["dataset"] for n in run_names(params)})
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
    text = build_report(
        root / "metrics",
        declared,
        run_names(params),
        params.get("run.crf", []),
        provenance,
        sources,
        sweeps=active_sweeps(params),
    )
    write_text_atomic(root / "reports" / "results.md", text)
    print(text)


if __name__ == "__main__":
    run_stage(main)
