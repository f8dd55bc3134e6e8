"""Where a one-pass model's network spends its time in torch and in ONNX Runtime, operator by operator, and what
ONNX Runtime's session options change.

    python benchmarks/profile_onnx.py --model results/cpu-small/models/gan --onnx /tmp/onnx-gan \\
        --output benchmarks/results_cpu.jsonl

- ``operators``: the share of each operator type in one runtime's time on batches of L at the model's resolution
  (torch: ``torch.profiler``'s self CPU time per aten operator; ONNX Runtime: its own profiler's node times,
  summed per ONNX operator type), the top ``--top`` of each.
- ``session_options``: ms per image of the network in ONNX Runtime under each tried session setting (graph
  optimizations off / basic / extended / all, thread spinning off, the sequential and parallel executors), beside
  torch's, timed interleaved with the same medians as ``benchmark_onnx.py``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from records import device_name, median_seconds, record  # noqa: E402

from colorization.inference import load_colorizer  # noqa: E402
from colorization.onnx_backend import ONNX_MODEL  # noqa: E402


def _median_ms(call, warmup: int, repeats: int, per: int) -> float:
    return 1000 * median_seconds(call, warmup, repeats) / per


def _shares(totals: dict, top: int) -> dict:
    whole = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return {name: round(value / whole, 3) for name, value in ranked}


def torch_operators(network, lightness, top: int) -> dict:
    with torch.inference_mode():
        for _ in range(3):
            network(lightness)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            for _ in range(10):
                network(lightness)
    totals = {event.key: event.self_cpu_time_total for event in profile.key_averages() if event.self_cpu_time_total}
    return _shares(totals, top)


def onnxruntime_operators(model_file: str, lightness: np.ndarray, top: int) -> dict:
    options = onnxruntime.SessionOptions()
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "ort")
        session = onnxruntime.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
        for _ in range(13):
            session.run(None, {"lightness": lightness})
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    totals = collections.Counter()
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    after_warmup = runs[3]["ts"] if len(runs) > 3 else 0
    for event in events:
        if (
            event.get("cat") == "Node"
            and event.get("name", "").endswith("_kernel_time")
            and event["ts"] >= after_warmup
        ):
            totals[event["args"].get("op_name", "?")] += event["dur"]
    return _shares(totals, top)


def session_settings() -> dict:
    level = onnxruntime.GraphOptimizationLevel
    settings = {}
    for name, value in (
        ("optimizations off", level.ORT_DISABLE_ALL),
        ("basic optimizations", level.ORT_ENABLE_BASIC),
        ("extended optimizations", level.ORT_ENABLE_EXTENDED),
        ("all optimizations (the default)", level.ORT_ENABLE_ALL),
    ):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = value
        settings[name] = options
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    settings["thread spinning off"] = options
    options = onnxruntime.SessionOptions()
    options.execution_mode = onnxruntime.ExecutionMode.ORT_PARALLEL
    settings["parallel executor"] = options
    return settings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="an exported one-pass model (torch)")
    parser.add_argument("--onnx", required=True, help="its ONNX folder (python -m colorization.export_onnx)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--top", type=int, default=6, help="operator types listed per runtime")
    parser.add_argument("--output", default=None, help="append the JSON lines to this file")
    args = parser.parse_args(argv)

    colorizer = load_colorizer(args.model, "cpu")
    network = colorizer.network.predict_ab  # what the ONNX graph holds: normalized L in, normalized ab out
    resolution = colorizer.resolution
    lightness = torch.rand(args.batch_size, 1, resolution, resolution, generator=torch.Generator().manual_seed(0))
    lightness = lightness * 2 - 1
    model_file = os.path.join(args.onnx, ONNX_MODEL)
    common = {
        "model_type": colorizer.model_type,
        "model": os.path.relpath(args.model),
        "input": f"batch {args.batch_size} at {resolution}px",
        "device": device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    operators = {
        "torch": torch_operators(network, lightness, args.top),
        "onnxruntime": onnxruntime_operators(model_file, lightness.numpy(), args.top),
    }
    record({"benchmark": "onnx_operators", **common, "share_of_time": operators}, args.output)

    sessions = {
        name: onnxruntime.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
        for name, options in session_settings().items()
    }
    feed = {"lightness": lightness.numpy()}
    found = collections.defaultdict(list)
    for _ in range(3):  # interleaved rounds, the best of three medians each
        with torch.inference_mode():
            found["torch"].append(_median_ms(lambda: network(lightness), args.warmup, args.repeats, args.batch_size))
        for name, session in sessions.items():
            found[name].append(
                _median_ms(lambda s=session: s.run(None, feed), args.warmup, args.repeats, args.batch_size)
            )
    ms = {name: round(min(values), 3) for name, values in found.items()}
    speedups = {name: round(ms["torch"] / value, 3) for name, value in ms.items() if name != "torch"}
    record(
        {"benchmark": "onnx_session_options", **common, "ms_per_image": ms, "speedup_over_torch": speedups}, args.output
    )


if __name__ == "__main__":
    main()
