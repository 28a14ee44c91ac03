"""Prepare a dataset split with Ray Data: read, validate every example, write Parquet shards.

Why Ray Data: decoding and validating thousands of images is embarrassingly parallel, and the
same code scales from this laptop to a cluster. Why Parquet of *encoded* bytes: shards are a few
large files (fast for DVC), hold variable-sized images, and decode losslessly in the loader.
Every row also gets ``image_sha256`` (``pipeline.data.leakage.pixel_digest``), computed in the
same pass, so the leakage guard compares splits by content without decoding them again.

Shards are named ``part-00000.parquet``... and written with overwrite into a temporary folder
that is renamed into place, so a rerun gives identical names and bytes (DVC caches them) and a
failure leaves nothing half-written.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa

from pipeline.data.datasets.base import Dataset
from pipeline.data.leakage import DIGEST_COLUMN, pixel_digest
from pipeline.errors import DataError
from pipeline.runtime.fsutil import atomic_path
from pipeline.runtime.raylogs import data_progress

ROWS_PER_SHARD = 500
ROWS_PER_TASK = 8  # examples per map task: small, so every CPU gets work (one task per block)


def _filename_provider():
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        """``part-{task_index:05d}.parquet``: deterministic, unlike Ray's UUID names."""

        def get_filename_for_task(self, write_uuid, task_index):
            return f"part-{task_index:05d}.parquet"

        def get_filename_for_block(self, block, write_uuid, task_index, block_index):
            return f"part-{task_index:05d}-{block_index:03d}.parquet"

    return ShardNames()


def _unwrap_data_error(exc: BaseException) -> DataError | None:
    """Find the DataError a Ray task raised, through Ray's exception wrappers."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DataError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    prefix = "pipeline.errors.DataError:"
    lines = [ln for ln in str(exc).splitlines() if ln.strip().startswith(prefix)]
    return DataError(lines[-1].strip().removeprefix(prefix).strip()) if lines else None


def prepare_split(dataset: Dataset, root: Path, split: str, out_dir: Path) -> int:
    """Write ``split`` of ``dataset`` (found at ``root``) as Parquet shards in ``out_dir``,
    atomically. Returns the number of examples. Raises DataError naming the first bad file."""
    with atomic_path(out_dir) as tmp:
        return write_split(dataset, root, split, tmp)


def write_split(
    dataset: Dataset,
    root: Path,
    split: str,
    out_dir: Path,
    ids: list[str] | None = None,
    label: str | None = None,
) -> int:
    """:func:`prepare_split` into a fresh folder (the caller makes it atomic): ``ids`` are the
    split's listed ids when the caller has them already; ``label`` names its progress bar."""
    import ray
    from ray.data import SaveMode

    ids = dataset.list_ids(root, split) if ids is None else ids
    if len(set(ids)) != len(ids):
        raise DataError(f"split {split!r} of {root} lists duplicate ids")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.raise_original_map_exception = True  # a bad file surfaces as our DataError
    # Ray Data reserves part of the CPUs per operator by default; on a small node that leaves
    # a CPU idle (as in pipeline/crf/dense.py)
    ctx.op_resource_reservation_enabled = False
    num_blocks = max(1, math.ceil(len(ids) / ROWS_PER_TASK))
    root = Path(root)

    def load(row: dict) -> dict:
        example = dataset.load_example(root, row["id"])
        source = f"image of {row['id']!r} in {root}"
        return {**example, DIGEST_COLUMN: pixel_digest(example["image"], source)}

    # Loading runs as one task per ROWS_PER_TASK ids, in parallel. The streaming repartition
    # (which Ray does not fuse into the map) then regroups the loaded rows, in order, into
    # ROWS_PER_SHARD-row blocks, one per shard file: written directly after the map, the write's
    # bundling of ROWS_PER_SHARD rows would be fused into the map and serialise it on one CPU.
    ds = (
        ray.data.from_items([{"id": i} for i in ids], override_num_blocks=num_blocks)
        .map(load)
        .repartition(target_num_rows_per_block=ROWS_PER_SHARD, strict=True)
    )
    try:
        # one bar counting the examples loaded (pipeline/runtime/raylogs.py)
        with data_progress(label or f"prepare {split}", len(ids), unit="img", op="Map(load)"):
            ds.write_parquet(
                str(out_dir),
                filename_provider=_filename_provider(),
                min_rows_per_file=ROWS_PER_SHARD,
                mode=SaveMode.OVERWRITE,
            )
    except Exception as exc:
        data_error = _unwrap_data_error(exc)
        if data_error is not None:
            raise data_error from None
        raise
    return len(ids)


def prepared_shards(path: Path) -> list[Path]:
    """A prepared split's Parquet shards in sorted (deterministic) order; a DataError if none."""
    files = sorted(Path(path).glob("*.parquet"))
    if not files:
        raise DataError(f"no prepared Parquet shards in {path} (run the prepare stage)")
    return files


def read_prepared(path: Path):
    """Open a prepared split as a Ray Dataset (sorted shard order: deterministic)."""
    import ray

    return ray.data.read_parquet([str(f) for f in prepared_shards(path)])


def prepared_rows(path: Path) -> int:
    """Rows of a prepared split from the Parquet footers alone (no data read: instant)."""
    import pyarrow.parquet as pq

    files = prepared_shards(path)
    return sum(pq.read_metadata(f).num_rows for f in files)


def prepared_sizes(path: Path) -> list[tuple[int, int]]:
    """(height, width) of every image of a prepared split, in row order (two columns read)."""
    import pyarrow.parquet as pq

    files = prepared_shards(path)
    columns = [pq.read_table(f, columns=["height", "width"]).to_pydict() for f in files]
    return [hw for c in columns for hw in zip(c["height"], c["width"])]


def prepared_bytes(path: Path) -> int:
    """Bytes of a prepared split's Parquet shards."""
    return sum(f.stat().st_size for f in Path(path).glob("*.parquet"))


def prepared_columns(path: Path) -> list[str]:
    """Column names of a prepared split, from the first shard's schema (no data read)."""
    import pyarrow.parquet as pq

    files = prepared_shards(path)
    return list(pq.read_schema(files[0]).names)


def read_prepared_table(path: Path) -> pa.Table:
    """Read a prepared split into memory with pyarrow (for evaluation on one machine)."""
    import pyarrow.parquet as pq

    files = prepared_shards(path)
    return pa.concat_tables([pq.read_table(f) for f in files])
