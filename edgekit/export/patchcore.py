"""PatchCore's side of an export: which network goes into the graph, which arrays into the head.

The backbone and the embedding (3×3 pooling, resize, concatenation) are the network; the memory
bank and the kNN scoring stay in numpy on the device and never get quantized.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.bundle import HeadSpec
from edgekit.export.job import ExportOptions
from edgekit.train.run import Run

BANK_FILE = "head/memory_bank.npy"


@dataclass
class FamilyParts:
    network: Any                          # torch.nn.Module to export
    head: HeadSpec
    arrays: dict[str, np.ndarray]         # bundle-relative .npy path -> array
    notes: dict[str, Any] = field(default_factory=dict)


def patchcore_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's embedding network and its full float32 memory bank."""
    from edgekit.train.patchcore import load_network

    bank = run.array("memory_bank").astype(np.float32)
    head = HeadSpec(kind="knn", params={"num_neighbors": int(run.config["num_neighbors"]), "blur_sigma": 4.0},
                    arrays={"memory_bank": BANK_FILE})
    return FamilyParts(network=load_network(run), head=head, arrays={BANK_FILE: bank},
                       notes={"bank": {"rows": int(bank.shape[0]), "dims": int(bank.shape[1]), "dtype": "float32"}})
