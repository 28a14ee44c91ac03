"""The report joins declared experiments with the published tables (pipeline/report/reference/)."""

import json

from pipeline.report.tables import all_tables, build_report, upper_bound_markdown


def _experiments():
    return {
        "fcn32s": {
            "model": "fcn32s",
            "tables": {"fcn_cvpr_table2": "fcn32s", "fcn_table1": "fcn-vgg16"},
        },
        "fcn8s": {"model": "fcn8s", "tables": {"fcn_cvpr_table2": "fcn8s"}},
        "deeplab-largefov": {
            "model": "deeplab-largefov",
            "tables": {"deeplab_crf": "deeplab-largefov"},
        },
    }


def test_ours_beside_the_paper_and_undeclared_rows(tmp_path):
    (tmp_path / "fcn32s.json").write_text(
        json.dumps({"pixel_acc": 0.5, "mean_acc": 0.25, "mean_iu": 0.123, "fw_iu": 0.4})
    )
    crf = {"before": {"mean_iu": 0.40}, "after": {"mean_iu": 0.465}, "crf_params": {"w1": 5}}
    (tmp_path / "deeplab-largefov-crf.json").write_text(json.dumps(crf))
    text = build_report(
        tmp_path, _experiments(), ["fcn32s", "deeplab-largefov"], ["deeplab-largefov"], "test"
    )
    assert "| fcn32s | `fcn32s` | 50.0 | 25.0 | 12.3 | 40.0 | 89.1 | 73.3 | 59.4 | 81.4 |" in text
    assert "| fcn8s | `fcn8s` (not in `run`) | n/a | n/a | n/a | n/a | 90.3 |" in text
    assert "| fcn32s-fixed | not declared |" in text
    assert "| DeepLab-LargeFOV | `deeplab-largefov` | 40.00 | 46.50 | 62.25 | 67.64 |" in text
    assert "w1=5" in text
    # Table 1's architecture columns are computed from the module graph at full width
    row = next(line for line in text.splitlines() if line.startswith("| FCN-VGG16 |"))
    assert "| 12.3 | 16 | 134.3 | 404 | 32 | 56.0 | 16 | 134.0 | 404 | 32 |" in row
    assert "fcn_table8" not in text and "Table 8" not in text  # no declared experiment: omitted


def test_every_reference_table_is_well_formed():
    from pipeline.report.tables import COLUMNS

    for table_id, table in all_tables().items():
        if table_id == "fcn_upper_bound":
            assert list(table["factors"]) == [128, 64, 32, 16, 8, 4]
            continue
        assert set(table["columns"]) <= set(COLUMNS), table_id
        for row in table["rows"].values():
            assert set(row or {}) <= set(table["columns"]) | {"paper_name", "note", "ours"}


def test_upper_bound_section_lists_every_variant_and_the_paper():
    scores = {str(f): {"mean_iu": 0.5} for f in (128, 64, 32, 16, 8, 4)}
    result = {
        "source": "labels",
        "default_method": "majority",
        "methods": {
            m: {"num_images": 3, "factors": scores} for m in ("majority", "nearest-center")
        },
    }
    text = upper_bound_markdown(result, all_tables()["fcn_upper_bound"])
    assert "| majority (default) | 50.00 |" in text and "| nearest-center | 50.00 |" in text
    assert "| paper | 50.9 | 73.3 | 86.1 | 92.8 | 96.4 | 98.5 |" in text


def test_a_row_on_another_dataset_is_marked_and_each_table_names_its_data(tmp_path):
    experiments = {
        "pixelnet-seg": {
            "model": "pixelnet",
            "dataset": "voc_aug",
            "tables": {"pixelnet_table1": "baseline"},
        },
        "pixelnet-edges": {
            "model": "pixelnet",
            "dataset": "bsds",
            "tables": {"pixelnet_table7": "conv5-50-ms"},
        },
    }
    for name in experiments:
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"mean_acc": 0.5, "mean_iu": 0.25, "ods": 0.6, "ois": 0.6, "ap": 0.5})
        )
    sources = {"voc_aug": "builtin", "bsds": "local"}
    text = build_report(tmp_path, experiments, list(experiments), [], "profile `paper`", sources)
    table1 = text[text.index("PixelNet Table 1") : text.index("PixelNet Table 7")]
    assert "Ours: profile `paper`; data: voc_aug (`builtin`). Paper:" in table1
    row = next(line for line in table1.splitlines() if "`pixelnet-seg`" in line)
    assert "(on `voc_aug`, the paper's is `context59`: not comparable)" in row
    table7 = text[text.index("PixelNet Table 7") :]
    assert "data: bsds (`local`)" in table7 and "voc_aug" not in table7
    assert "not comparable" not in next(l for l in table7.splitlines() if "pixelnet-edges" in l)
