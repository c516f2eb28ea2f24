"""One deployed model in its own process, timed on command (by ``under_load.py`` only).

Usage: ``python3 _under_load_child.py JOB_JSON``. The child loads its model, warms it up and
prints ``READY``; then each stdin line ``latency N`` runs N ``predict`` calls on one decoded image
and ``batch N`` one ``predict_batch`` of N decoded images; each answers one ``RESULT {json}`` line
of milliseconds. ``quit`` (or end of input) ends it. A process per variant keeps each runtime's
thread pools, BLAS and (for anomalib) torch out of the others' way.
"""

import json
import sys
import time


def _edgekit(job: dict):
    import numpy as np
    from PIL import Image

    import edgekit

    detector = edgekit.load(job["model"], **job.get("load", {}))
    image = np.asarray(Image.open(job["latency_image"]).convert("RGB"))
    batch_images = [np.asarray(Image.open(p).convert("RGB")) for p in job["batch_images"]]

    def one():
        detector.predict(image)

    def many(count: int):
        detector.predict_batch((batch_images * count)[:count])

    return one, many, 1


def _anomalib(job: dict):
    import numpy as np
    from anomalib.data.utils import read_image
    from anomalib.deploy import OpenVINOInferencer

    inferencer = OpenVINOInferencer(path=job["model"], device="CPU", config=dict(job["ov_config"]))
    batch = int(job["static_batch"])
    # anomalib's PatchCore graph has a static batch: one image fills it by repetition
    image = np.stack([read_image(job["latency_image"], as_tensor=False)] * batch)
    images = [read_image(p, as_tensor=False) for p in job["batch_images"]]

    def one():
        inferencer.predict(image)

    def many(count: int):
        chosen = (images * count)[:count]
        for start in range(0, count, batch):
            group = chosen[start : start + batch]
            inferencer.predict(np.stack(group + [group[-1]] * (batch - len(group))))

    return one, many, batch


def main() -> None:
    job = json.loads(sys.argv[1])
    one, many, batch = (_anomalib if job["side"] == "anomalib" else _edgekit)(job)
    for _ in range(int(job.get("warmup", 5))):
        one()
    many(len(job["batch_images"]))
    print("READY " + json.dumps({"images_per_call": batch}), flush=True)
    for line in sys.stdin:
        command, _, count = line.strip().partition(" ")
        if command == "latency":
            times = []
            for _ in range(int(count)):
                started = time.perf_counter()
                one()
                times.append((time.perf_counter() - started) * 1e3)
            print("RESULT " + json.dumps(times), flush=True)
        elif command == "batch":
            started = time.perf_counter()
            many(int(count))
            print("RESULT " + json.dumps([(time.perf_counter() - started) * 1e3]), flush=True)
        else:
            break


if __name__ == "__main__":
    main()
