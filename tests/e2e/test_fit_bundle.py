"""edgekit fit on a real exported bundle: torch absent, and the bank equals the training path's."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_fit import _patches

from edgekit.bundle import load_bundle
from edgekit.compress.coreset import coreset_count, coreset_indices
from edgekit.compress.pca import compress_bank
from edgekit.fit import list_normals, split_normals
from edgekit.runtime.heads import decode_bank


@pytest.fixture(scope="module")
def device_fit(x86_bundle, brick, tmp_path_factory):
    """`fit` on 12 brick training images (2 held out: threshold rule max), in a fresh process in which torch
    cannot be imported."""
    folder = tmp_path_factory.mktemp("device_normals")
    for path in sorted((brick / "train" / "good").iterdir())[:12]:
        shutil.copyfile(path, folder / path.name)
    out = tmp_path_factory.mktemp("device_fit") / "bundle"
    code = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
        "from edgekit.fit import fit_bundle\n"
        "fit_bundle(sys.argv[1], sys.argv[2], out=sys.argv[3], threshold_rule='max')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'anomalib')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(x86_bundle), str(folder), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return folder, out, done.stdout.strip()


def test_fit_runs_without_torch(device_fit):
    _, out, imported = device_fit
    assert imported == "['torch']"  # only the blocked placeholder: nothing imported torch, timm or anomalib
    assert load_bundle(out).manifest.head.params["bank"]["fitted"]["images"] == 10


def test_device_bank_equals_the_training_path_on_the_same_images(device_fit, patchcore_run):
    from edgekit.compress.pca import DEFAULT_BANK
    from edgekit.families.patchcore.train import compressed_bank, embed, input_spec_for, load_network

    folder, out, _ = device_fit
    images = list_normals(folder)
    bank_idx, _ = split_normals(len(images), 0.2, patchcore_run.config["seed"])
    config = patchcore_run.config
    torch_features = embed(
        load_network(patchcore_run),
        [images[i] for i in bank_idx],
        input_spec_for(config["backbone"], config["image_size"]),
    )
    pca = compressed_bank(patchcore_run, DEFAULT_BANK).pca
    patches = _patches(torch_features if pca is None else pca.project_maps(torch_features))
    count = coreset_count(len(patches), config["coreset_ratio"])
    chosen = coreset_indices(patches, count, seed=config["seed"])
    rows = DEFAULT_BANK.rows(count, 152, patches.shape[1])
    expected = compress_bank(patches[chosen], dtype=DEFAULT_BANK.dtype, size=rows, seed=config["seed"])
    fitted = load_bundle(out)
    got = decode_bank({name: fitted.array(name) for name in fitted.manifest.head.arrays}, DEFAULT_BANK.dtype)
    want = decode_bank(expected.arrays, DEFAULT_BANK.dtype)
    assert got.shape == want.shape == (rows or count, patches.shape[1])
    assert fitted.manifest.head.params["bank"]["coreset_rows"] == count
    # the same rows (float32 greedy selection may visit two near-tied patches in swapped order)
    step = float(np.max(expected.arrays.get("bank_scale", np.float32(0))))
    tolerance = step + 1e-3 * float(np.abs(want).max())
    from edgekit.runtime.heads import nearest_neighbors

    for a, b in ((got, want), (want, got)):
        distances, nearest = nearest_neighbors(a, b)
        assert np.all(np.abs(a - b[nearest]) <= tolerance)
    mismatched = np.flatnonzero(np.abs(got - want).max(axis=1) > tolerance)
    assert len(mismatched) <= 4, f"selection order differs at {len(mismatched)} rows"
