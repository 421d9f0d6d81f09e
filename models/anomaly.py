"""``anomaly``: an autoencoder an edge sensor runs over a window of multichannel readings.

Input ``window`` FP32 [128]: 32 time steps x 4 channels, time-major. Outputs ``score`` FP32 [1]
(mean squared reconstruction error) and ``anomaly`` BOOL [1] (score above a threshold set at the
99th percentile of normal validation windows). Trained offline on generated vibration-like signals;
the manifest records the detection rate on held-out windows with injected faults (spikes, stuck
channels, drift, noise bursts) and the false-alarm rate on held-out normal windows.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from models.spec import ModelSpec, TensorSpec, pin_versions

SEED = 2
STEPS, CHANNELS = 32, 4
WIDTH = STEPS * CHANNELS


def normal_windows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Each channel: a sum of two sinusoids with random phase plus sensor noise."""
    t = np.arange(STEPS, dtype=np.float64)[None, :, None]
    base_freq = np.array([0.05, 0.08, 0.11, 0.15])[None, None, :]
    freq = base_freq * rng.uniform(0.9, 1.1, size=(n, 1, CHANNELS))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, CHANNELS))
    amp = rng.uniform(0.8, 1.2, size=(n, 1, CHANNELS))
    x = amp * np.sin(2 * np.pi * freq * t + phase) + 0.3 * np.sin(4 * np.pi * freq * t + 2 * phase)
    x += rng.normal(0, 0.05, size=x.shape)
    return x.reshape(n, WIDTH).astype(np.float32)


def faulty_windows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal windows with one injected fault each: spike, stuck channel, drift or noise burst."""
    x = normal_windows(rng, n).reshape(n, STEPS, CHANNELS)
    for i in range(n):
        ch = rng.integers(CHANNELS)
        kind = i % 4
        if kind == 0:  # spike
            x[i, rng.integers(STEPS), ch] += rng.choice([-1, 1]) * rng.uniform(2.5, 4.0)
        elif kind == 1:  # stuck at its last value for the second half
            x[i, STEPS // 2 :, ch] = x[i, STEPS // 2, ch]
        elif kind == 2:  # drift
            x[i, :, ch] += np.linspace(0, rng.uniform(1.0, 2.0), STEPS)
        else:  # noise burst
            x[i, :, ch] += rng.normal(0, 0.6, STEPS)
    return x.reshape(n, WIDTH)


def _train(rng: np.random.Generator):
    from sklearn.neural_network import MLPRegressor
    from threadpoolctl import threadpool_limits

    train = normal_windows(rng, 6000)
    ae = MLPRegressor(hidden_layer_sizes=(48, 12, 48), max_iter=300, random_state=SEED, tol=1e-6)
    with threadpool_limits(limits=1):  # one BLAS thread: the weights must not depend on the thread count
        ae.fit(train, train)
    return ae


def _to_onnx(ae, threshold: float) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(
        ae,
        "anomaly",
        initial_types=[("window", FloatTensorType([None, WIDTH]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    graph = model.graph
    recon = graph.output[0].name
    del graph.output[:]
    graph.initializer.append(helper.make_tensor("threshold", TensorProto.FLOAT, [], [threshold]))
    # skl2onnx flattens a multi-output regressor's prediction; give it back its window shape.
    graph.initializer.append(helper.make_tensor("window_shape", TensorProto.INT64, [2], [-1, WIDTH]))
    graph.node.extend(
        [
            helper.make_node("Reshape", [recon, "window_shape"], ["reconstruction"]),
            helper.make_node("Sub", ["window", "reconstruction"], ["residual"]),
            helper.make_node("Mul", ["residual", "residual"], ["squared"]),
            helper.make_node("ReduceMean", ["squared"], ["score"], axes=[1], keepdims=1),
            helper.make_node("Greater", ["score", "threshold"], ["anomaly"]),
        ]
    )
    graph.output.extend(
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("anomaly", TensorProto.BOOL, [None, 1]),
        ]
    )
    return pin_versions(model)


def build() -> tuple[ModelSpec, onnx.ModelProto]:
    rng = np.random.default_rng(SEED)
    ae = _train(rng)
    validation = normal_windows(rng, 2000)
    # The threshold comes from the ONNX graph's own scores, so it is exact for the shipped model.
    probe = _to_onnx(ae, threshold=np.inf)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    threshold = float(np.percentile(session.run(["score"], {"window": validation})[0], 99))
    model = _to_onnx(ae, threshold)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    detected = session.run(["anomaly"], {"window": faulty_windows(rng, 2000)})[0]
    false_alarms = session.run(["anomaly"], {"window": normal_windows(rng, 2000)})[0]
    spec = ModelSpec(
        name="anomaly",
        description="autoencoder over 32x4 sensor windows; flags spikes, stuck channels, drift, noise",
        inputs=(TensorSpec("window", "FP32", (WIDTH,)),),
        outputs=(TensorSpec("score", "FP32", (1,)), TensorSpec("anomaly", "BOOL", (1,))),
        max_batch_size=256,
        preferred_batch_sizes=(32, 64, 128),
        max_queue_delay_us=500,
        metrics={
            "threshold": threshold,
            "detection_rate": round(float(detected.mean()), 4),
            "false_alarm_rate": round(float(false_alarms.mean()), 4),
        },
    )
    return spec, model
