"""A stage's output in a log (not a terminal): Ray Data's progress blocks ("Total Progress",
operators "backpressured", every 10 s) and execution chatter stay out, a prepare shows one bar
with its count, warnings stay visible, and a bar in a log is a few whole lines."""

from __future__ import annotations

import functools
import io
import logging
import os
import time
import warnings

from ray.data import ExecutionOptions, ExecutionResources

from pipeline.data.builtin.voc import BuiltinSpec, write_builtin_voc
from pipeline.data.datasets.voc import VOC
from pipeline.data.prepare import write_split
from pipeline.models import build_model
from pipeline.runtime import tracking
from pipeline.runtime.progress import progress_bar
from pipeline.runtime.raycluster import init_ray
from pipeline.runtime.raylogs import drop_benign_cluster_errors, quiet_ray

RAY_DATA_NOISE = (
    "logging_progress",
    "Running Dataset",
    "Total Progress",
    "backpressured",
    "Starting execution",
    "Execution plan",
    "execution finished",
    "Progress bars disabled",
)


def test_prepare_prints_one_bar_and_no_ray_data_progress_blocks(ray_local, tmp_path, capfd):
    init_ray()  # what every stage runs first (the runtime itself is the session's)
    raw = write_builtin_voc(tmp_path / "raw", BuiltinSpec(num_train=8, num_val=2, size=40), False)
    capfd.readouterr()
    written = write_split(VOC(), raw, "train", tmp_path / "train", label="prepare voc/train")
    # a warning still reaches the handlers (which stream they write to depends on what other
    # tests configured, so the record is caught at the logger)
    seen: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = seen.append
    logging.getLogger("ray.data").addHandler(catcher)
    try:
        logging.getLogger("ray.data").warning("a Ray Data warning stays visible")
    finally:
        logging.getLogger("ray.data").removeHandler(catcher)
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert written == 8
    assert not [noise for noise in RAY_DATA_NOISE if noise in text], text[-3000:]
    bars = [line for line in text.splitlines() if line.startswith("prepare voc/train:")]
    assert bars and "8/8" in bars[-1] and len(bars) <= 3, text[-3000:]
    assert "\r" not in text
    assert [r.getMessage() for r in seen] == ["a Ray Data warning stays visible"]
    # the processes Ray starts from a stage inherit the same setting
    assert os.environ["RAY_DATA_LOG_LEVEL"] == "WARNING"


def test_a_bar_in_a_log_is_a_few_whole_lines():
    log = io.StringIO()  # not a terminal
    for _ in progress_bar(range(3000), file=log, desc="evaluate", unit="img", log_interval=0.05):
        time.sleep(0.0001)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert 2 <= len(lines) <= 20, lines
    assert lines[0].startswith("evaluate:   0%") and "3000/3000" in lines[-1]
    assert len([line for line in lines if "3000/3000" in line]) == 1  # close adds no repeat


def test_ray_trains_own_deprecation_is_filtered_and_other_warnings_are_not():
    quiet_ray()  # Ray Data's context is made here (it warns about its own deprecated fields)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # pytest's settings ignore DeprecationWarning
        quiet_ray()  # again: its filter goes in front
        ExecutionOptions(exclude_resources=ExecutionResources(cpu=1))  # what Ray Train does
        warnings.warn("a deprecation of ours stays visible", DeprecationWarning, stacklevel=1)
    messages = [str(w.message) for w in seen]
    assert messages == ["a deprecation of ours stays visible"], messages


def test_logging_the_final_model_repeats_no_pickle_caution(tmp_path, monkeypatch):
    """MLflow warns about pickle on every log_model: a deliberate choice (tracking.log_model),
    so every train stage's log would carry it; other MLflow warnings stay visible."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    seen: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = seen.append
    logger = logging.getLogger("mlflow.pytorch")
    logger.addHandler(catcher)
    try:
        artifacts = (tmp_path / "artifacts").as_uri()  # not ./mlruns
        with mlflow.start_run(experiment_id=mlflow.create_experiment("quiet", artifacts)):
            tracking.log_model(build_model("fcn32s", 21, width=0.0625))
        logger.warning("an MLflow warning stays visible")
    finally:
        logger.removeHandler(catcher)
        mlflow.set_tracking_uri(previous)
    assert [r.getMessage() for r in seen] == ["an MLflow warning stays visible"]


def test_the_gcs_killing_an_exited_actor_is_not_printed_and_other_cluster_lines_are(capfd):
    """Ray forwards the GCS's stderr to every driver: "Failed to kill actor ... Socket closed"
    (a finished stage's actor, already gone) came out in red during `make repro`. Through Ray's
    own dispatcher and printer, as `ray.init(log_to_driver=True)` installs them."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    from ray._private.worker import print_to_stdstream

    benign = (
        "[2026-12-07 22:40:32,343 E 4435 4435] (gcs_server) gcs_actor_scheduler.cc:538: Failed to "
        "kill actor a674, return status: Invalid: KillActor RPC failed for actor a674: RpcError: "
        "RPC error: Socket closed rpc_code: 14"
    )
    other = "[2026-12-07 22:40:33,000 E 4435 4435] (gcs_server) node_manager.cc:1: a real error"
    dispatcher.add_handler(
        "ray_print_logs", functools.partial(print_to_stdstream, ignore_prefix=False)
    )
    try:
        drop_benign_cluster_errors()
        drop_benign_cluster_errors()  # idempotent: wrapped once
        capfd.readouterr()
        for lines in ([benign], [benign, other]):
            dispatcher.emit(
                {"pid": "gcs_server", "is_err": True, "lines": lines, "ip": "127.0.0.1"}
            )
        err = capfd.readouterr().err
    finally:
        dispatcher.remove_handler("ray_print_logs")
    assert "Failed to kill actor" not in err, err
    assert "a real error" in err and err.count("a real error") == 1, err
