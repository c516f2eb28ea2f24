"""One deployed model in a fresh process: cold start, steady latency, peak RSS, test-set outputs.

Usage (by vs_anomalib.py only): ``python3 _deployed_child.py JOB.json PARENT_START``, where
PARENT_START is the parent's ``time.perf_counter()`` just before it spawned this process. On Linux
``perf_counter`` is CLOCK_MONOTONIC, one clock for all processes, so ``first prediction −
PARENT_START`` is the cold start from process creation, interpreter start-up included.

Only the standard library is imported before the clock starts mattering; each side then imports
exactly what its deployment needs (anomalib's ``OpenVINOInferencer``, or ``edgekit``).
The result is one line ``RESULT {json}`` on stdout; test outputs go to an ``.npz`` (no pickle).
"""

import json
import sys
import time


def _peak_rss_mb() -> float:
    # VmHWM is this address space's own peak; ru_maxrss would carry the parent's across exec.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _loaded_files() -> list[str]:
    """Every file this process runs: imported modules' sources and mapped shared objects."""
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path:
            files.add(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(parts[5].strip())
    return sorted(files)


def _anomalib(job: dict):
    import numpy as np
    from anomalib.data.utils import read_image
    from anomalib.deploy import OpenVINOInferencer

    inferencer = OpenVINOInferencer(path=job["model"], device="CPU", config=dict(job["ov_config"]))
    batch = int(job["static_batch"])

    def run(paths):
        # anomalib's PatchCore graph has a static batch: fill the batch by repeating the last image
        images = [read_image(p, as_tensor=False) for p in paths]
        images += [images[-1]] * (batch - len(images))
        result = inferencer.predict(np.stack(images))
        score = np.asarray(result.pred_score).reshape(batch)[: len(paths)]
        maps = np.asarray(result.anomaly_map).reshape(batch, *np.asarray(result.anomaly_map).shape[-2:])
        return score, score, maps[: len(paths)]  # anomalib's graph outputs only its normalised score

    return run, batch, None, inferencer.model


def _edgekit(job: dict):
    import numpy as np

    import edgekit

    detector = edgekit.load(job["model"])

    def run(paths):
        raw, maps = detector.raw(list(paths))
        normalised = np.array([p.score for p in detector.decide(raw, maps)])
        return raw, normalised, maps

    def stages(path):
        """(pre-processing, network, head) seconds of one prediction, through the detector's parts."""
        from edgekit.preprocess import prepare

        t0 = time.perf_counter()
        batch = prepare([path], detector.manifest.input)
        t1 = time.perf_counter()
        outputs = detector.backend.infer({detector.manifest.network.input_name: batch})
        t2 = time.perf_counter()
        detector.head(outputs[detector.manifest.network.output_names[0]])
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    return run, 1, stages, getattr(detector.backend, "_compiled", None)


def _hint(compiled) -> str:
    """The INFERENCE_PRECISION_HINT the compiled OpenVINO model actually runs with."""
    try:
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    except Exception:  # no compiled model exposed, or a device without the property
        return "unknown"


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    parent_start = float(sys.argv[2])
    t_import = time.perf_counter()
    run, batch, stages, compiled = (_anomalib if job["side"] == "anomalib" else _edgekit)(job)
    t_loaded = time.perf_counter()
    latency_paths = [job["latency_image"]] * batch  # one network call scores `batch` images
    run(latency_paths)
    t_first = time.perf_counter()
    result = {
        "cold_start_s": t_first - parent_start,
        "interpreter_s": t_import - parent_start,
        "import_and_load_s": t_loaded - t_import,
        "first_call_s": t_first - t_loaded,
        "batch": batch,
        "torch_imported": "torch" in sys.modules,
        "precision_hint": _hint(compiled),
    }
    if job["mode"] == "full":
        import numpy as np

        for _ in range(job["warmup"]):
            run(latency_paths)
        calls = []
        for _ in range(job["runs"]):
            started = time.perf_counter()
            run(latency_paths)
            calls.append(time.perf_counter() - started)
        result["call_ms"] = [1000 * c for c in calls]
        result["peak_rss_mb"] = _peak_rss_mb()  # serving footprint, before the test-set pass
        if stages is not None:
            split = [stages(job["latency_image"]) for _ in range(max(5, job["runs"] // 3))]
            result["stage_ms"] = {
                name: 1000 * float(np.median([s[i] for s in split]))
                for i, name in enumerate(("preprocess", "network", "head"))
            }
        result["loaded_files"] = _loaded_files()
        paths = job["test_images"]
        raw, normalised, maps = [], [], []
        for start in range(0, len(paths), batch):
            r, n, m = run(paths[start : start + batch])
            raw.append(r)
            normalised.append(n)
            maps.append(np.asarray(m, dtype=np.float32))
        np.savez(
            job["outputs"],
            raw=np.concatenate(raw).astype(np.float64),
            normalised=np.concatenate(normalised).astype(np.float64),
            maps=np.concatenate(maps),
        )
    else:
        result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
