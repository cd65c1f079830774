"""DeiT-S (random weights from mixq) through ONNX Runtime and PyTorch on the CPU.

Loads the safetensors file `cargo xtask bench-int --save-weights` writes (timm key names) into
timm's `deit_small_patch16_224`, checks the logits agree with PyTorch, exports ONNX and times:
ORT fp32, ORT int8 static QDQ (u8 activations, per-channel s8 weights, calibrated on random
images), ORT int8 dynamic, PyTorch fp32 and PyTorch dynamic int8 (nn.Linear). Each at batch 1
(latency, ms) and batch 8 (images/s), with the given number of threads. Run via ort_bench.sh.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--calib", type=int, default=8)
    p.add_argument("--workdir", default="target/ort-bench")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)

    import onnxruntime as ort
    import timm
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    model = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=1000)
    state = load_file(args.weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not match timm's deit_small: missing {missing}, unexpected {unexpected}")
    model.eval()

    rng = np.random.default_rng(0)
    x8 = rng.standard_normal((8, 3, 224, 224), dtype=np.float32)
    x1 = x8[:1].copy()

    fp32 = os.path.join(args.workdir, "deit_s_fp32.onnx")
    with torch.inference_mode():
        export_kwargs = dict(input_names=["images"], output_names=["logits"],
                             dynamic_axes={"images": {0: "b"}, "logits": {0: "b"}}, opset_version=17)
        try:
            torch.onnx.export(model, torch.from_numpy(x1), fp32, dynamo=False, **export_kwargs)
        except TypeError:
            torch.onnx.export(model, torch.from_numpy(x1), fp32, **export_kwargs)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)}
                               for _ in range(args.calib)])

        def get_next(self):
            return next(self.items, None)

    qdq = os.path.join(args.workdir, "deit_s_int8_qdq.onnx")
    quantize_static(fp32, qdq, Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    dyn = os.path.join(args.workdir, "deit_s_int8_dynamic.onnx")
    quantize_dynamic(fp32, dyn, weight_type=QuantType.QInt8, per_channel=True)

    def session(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def timed(run, x):
        """Seconds per image at batch len(x): median over repeats of >= args.images images."""
        run(x)
        per = []
        for _ in range(args.repeat):
            n = 0
            t = time.perf_counter()
            while n < args.images:
                run(x)
                n += len(x)
            per.append((time.perf_counter() - t) / n)
        return statistics.median(per)

    with torch.inference_mode():
        ref = model(torch.from_numpy(x8)).numpy()

    rows = []

    def add(name, run, path=None):
        logits = run(x8)
        dev = float(np.abs(logits - ref).max())
        top1 = float((logits.argmax(1) == ref.argmax(1)).mean())
        b1 = timed(run, x1) * 1e3
        b8 = 1.0 / timed(run, x8)
        size = os.path.getsize(path) if path else None
        rows.append(dict(name=name, b1_ms=b1, b8_ips=b8, model_bytes=size, max_dlogit=dev, top1_agree=top1))
        print(f"{name}: b1 {b1:.1f} ms, b8 {b8:.1f} images/s", flush=True)

    for name, path in [("ORT fp32", fp32), ("ORT int8 static QDQ (u8/s8 per-channel)", qdq),
                       ("ORT int8 dynamic", dyn)]:
        s = session(path)
        add(name, lambda x, s=s: s.run(None, {"images": x})[0], path)

    def torch_run(m):
        def run(x):
            with torch.inference_mode():
                return m(torch.from_numpy(x)).numpy()
        return run

    add("PyTorch fp32", torch_run(model))
    try:
        qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        add("PyTorch dynamic int8 (Linear)", torch_run(qmodel))
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"PyTorch dynamic int8 unavailable: {e}")

    print(f"\nDeiT-S random weights, {args.threads} threads; onnxruntime {ort.__version__}, "
          f"torch {torch.__version__}, timm {timm.__version__}")
    print("| runtime | b1 latency ms | b8 images/s | model MB | max |Δlogit| vs torch fp32 | top-1 agree |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        mb = f"{r['model_bytes'] / 1e6:.1f}" if r["model_bytes"] else "-"
        print(f"| {r['name']} | {r['b1_ms']:.1f} | {r['b8_ips']:.1f} | {mb} | {r['max_dlogit']:.3g} | "
              f"{r['top1_agree'] * 100:.0f} % |")
    with open(os.path.join(args.workdir, "ort.json"), "w") as f:
        json.dump(dict(threads=args.threads, onnxruntime=ort.__version__, torch=torch.__version__,
                       rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
