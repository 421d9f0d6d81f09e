"""``railgate demo``: start a real hub, send real ``digits`` inferences through it, stop everything."""

from __future__ import annotations

import argparse

import numpy as np


def run(args: argparse.Namespace) -> int:
    import tritonclient.http as httpclient
    from sklearn.datasets import load_digits

    from hub.server import Hub, HubConfig, HubError, free_port

    x, y = load_digits(return_X_y=True)
    picks = np.random.default_rng(7).choice(len(y), size=8, replace=False)
    try:
        hub = Hub(HubConfig(args.repository, http_port=free_port(), name="west-1")).start()
    except HubError as exc:
        print(f"railgate demo: {exc}")
        return 1
    try:
        print(f"hub west-1 ready at {hub.http_url} in {hub.startup_s:.2f}s, models: {', '.join(hub.models)}")
        client = httpclient.InferenceServerClient(hub.http_url.removeprefix("http://"))
        pixels = x[picks].astype(np.float32)
        tensor = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels, binary_data=True)
        result = client.infer("digits", [tensor])
        labels = result.as_numpy("label")[:, 0]
        confidence = result.as_numpy("probabilities").max(axis=1)
        for i, truth, label, p in zip(picks, y[picks], labels, confidence, strict=True):
            mark = "ok" if label == truth else "MISS"
            print(f"digits sample {i:4d}: true {truth}  predicted {label}  p={p:.3f}  {mark}")
    finally:
        hub.stop()
    print("hub stopped")
    return 0
