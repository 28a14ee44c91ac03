"""A trained model as inference on new images sees it: the network and the facts it needs.

``densepipe predict`` and ``densepipe export`` take a model from an experiment
(``pipeline.experiment.trained_model``) or from a state-dict file
(``pipeline.experiment.weights_model``); both arrive as a :class:`TrainedModel`. Light on
purpose (no Ray, CRF or plotting imports): ``pipeline.experiment`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.data.loader import InputSpec

__all__ = ["TrainedModel"]


@dataclass(frozen=True)
class TrainedModel:
    """A trained network and how to read it: its task, the activation its scores take, test
    scales, input normalisation, class names when known, and (an experiment's) CRF file."""

    model: nn.Module
    name: str
    task: str = "segmentation"
    loss_kind: str = "softmax"
    scales: tuple[float, ...] = (1.0,)
    spec: InputSpec = field(default_factory=InputSpec)
    classes: tuple[str, ...] | None = None
    #: an experiment's searched CRF parameters (``crf_search``'s best.json); None: no experiment
    crf_file: Path | None = None

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0))

    @property
    def activation(self) -> str:
        """``softmax``, ``sigmoid`` (edges, sigmoid-trained classes) or ``l2`` (normals: the 3
        outputs scaled to a unit vector)."""
        if self.task == "normals":
            return "l2"
        if self.task == "edges" or self.loss_kind != "softmax":
            return "sigmoid"
        return "softmax"

    def metadata(self) -> dict[str, Any]:
        """What a user of an exported file needs besides the network."""
        return {
            "name": self.name,
            "task": self.task,
            "num_classes": self.num_classes,
            "activation": self.activation,
            "loss_kind": self.loss_kind,
            "test_scales": list(self.scales),
            "classes": list(self.classes) if self.classes else None,
        }
