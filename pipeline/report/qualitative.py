"""Several models' predictions of the same images side by side (FCN-32s | 16s | 8s).

The evaluate stage keeps its first few predictions as arrays (``qualitative.npz`` beside its
figures: ids, images, truths, predictions) rather than only as a finished grid, so the report can
set the models of a staged chain (each experiment's ``init`` is the previous one) next to each
other on the images they share, without running any model again.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.report import plots
from pipeline.runtime.fsutil import atomic_path

QUALITATIVE_FILE = "qualitative.npz"


@dataclass(frozen=True)
class Example:
    id: str
    image: np.ndarray  # H x W x 3 uint8
    label: np.ndarray  # H x W class indices (255: void)
    pred: np.ndarray  # H x W predicted classes


def save_examples(examples: list[Example], path: Path) -> None:
    """``path`` (npz, compressed, atomic): every example's id and arrays."""
    arrays: dict[str, np.ndarray] = {"ids": np.asarray([e.id for e in examples], dtype=str)}
    for i, e in enumerate(examples):
        arrays[f"image_{i}"] = np.asarray(e.image, np.uint8)
        arrays[f"label_{i}"] = np.asarray(e.label, np.uint8)
        arrays[f"pred_{i}"] = np.asarray(e.pred, np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_examples(path: Path) -> list[Example]:
    """The examples :func:`save_examples` wrote (DataError naming the file if unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [
                Example(str(id_), data[f"image_{i}"], data[f"label_{i}"], data[f"pred_{i}"])
                for i, id_ in enumerate(data["ids"])
            ]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a qualitative examples file ({exc})") from exc


def staged_chains(experiments: dict[str, dict], ran: list[str]) -> list[list[str]]:
    """Chains of experiments that ran, each initialised from the previous one with another
    model on the same dataset (fcn32s -> fcn16s -> fcn8s), longest first from each leaf.

    Same-model children (fcn32s -> fcn32s-test-mask-fg: the same weights, masked input) do not
    extend a chain."""
    ran_set = set(ran)

    def parent(name: str) -> str | None:
        entry, init = experiments[name], experiments[name].get("init")
        if init not in ran_set or init == name:
            return None
        up = experiments[init]
        same = up.get("model") == entry.get("model") or up.get("dataset") != entry.get("dataset")
        return None if same else init

    parents = {name: parent(name) for name in ran if name in experiments}
    has_child = {p for p in parents.values() if p}
    chains = []
    for leaf in (n for n in parents if n not in has_child and parents[n]):
        chain = [leaf]
        while parents.get(chain[0]) and parents[chain[0]] not in chain:
            chain.insert(0, parents[chain[0]])
        chains.append(chain)
    return chains


def chain_rows(examples: dict[str, list[Example]]) -> list[tuple[np.ndarray, ...]]:
    """(image, truth, each model's prediction) for every image all the models kept, in the
    first model's order."""
    names = list(examples)
    by_id = {n: {e.id: e for e in examples[n]} for n in names}
    rows = []
    for e in examples[names[0]]:
        if all(e.id in by_id[n] for n in names[1:]):
            rows.append((e.image, e.label, *(by_id[n][e.id].pred for n in names)))
    return rows


def chain_grid(chain: list[str], figures_dir: Path, path: Path) -> bool:
    """image | ground truth | one column per model of ``chain``, from each experiment's
    ``figures_dir/<experiment>/qualitative.npz``; False (nothing written) when a model has no
    saved examples or they share no image."""
    files = {n: Path(figures_dir) / n / QUALITATIVE_FILE for n in chain}
    if not all(f.is_file() for f in files.values()):
        return False
    rows = chain_rows({n: load_examples(f) for n, f in files.items()})
    if not rows:
        return False
    plots.prediction_grid(rows, path, ("image", "ground truth", *chain))
    return True
