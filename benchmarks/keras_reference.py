"""The reference Keras feature pipeline, timed on request: run by bench_extraction.py --keras-python PATH in
a TensorFlow interpreter (its own virtual environment; vfe and torch are not needed there).

The reference extracted features with tf.keras' DenseNet121 (include_top=False, global average pooling) and
`model.predict(..., batch_size=100)` on images resized to the network's input and scaled by the application's
`preprocess_input`. Here: uint8 images from an .npy file (N x H x W grey or N x H x W x 3), resized to
--size with tf.image.resize (bilinear), grey repeated to three channels, preprocess_input, predict at batch
100. Weights are random (weights=None): no ImageNet weights ship offline, and the speed does not depend on
them.

Protocol on stdin/stdout (one JSON object per line), so the parent can interleave its rounds with vfe's:
  -> {"ready": true, "tensorflow": "2.x", "threads": ...}       after the model is built and warmed up
  <- "time"                                                      run the whole pipeline on every image once
  -> {"seconds": wall, "cpu_seconds": process CPU, "images": N}
  <- "quit"

    /path/to/tf-venv/bin/python benchmarks/keras_reference.py images.npy --size 224
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", help=".npy of uint8 images")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf

    images = np.load(args.images, allow_pickle=False)
    model = tf.keras.applications.DenseNet121(weights=None, include_top=False, pooling="avg",
                                              input_shape=(args.size, args.size, 3))
    preprocess = tf.keras.applications.densenet.preprocess_input

    def pipeline(x: np.ndarray) -> np.ndarray:
        x = tf.convert_to_tensor(x)
        if x.shape.rank == 3:
            x = x[..., None]
        x = tf.image.resize(tf.cast(x, tf.float32), (args.size, args.size))
        if x.shape[-1] == 1:
            x = tf.repeat(x, 3, axis=-1)
        return model.predict(preprocess(x), batch_size=args.batch_size, verbose=0)

    pipeline(images[: args.batch_size])  # warm-up: graph tracing and oneDNN kernel selection
    print(json.dumps({"ready": True, "tensorflow": tf.__version__,
                      "threads": [tf.config.threading.get_intra_op_parallelism_threads(),
                                  tf.config.threading.get_inter_op_parallelism_threads()]}), flush=True)
    for line in sys.stdin:
        if line.strip() != "time":
            break
        wall, cpu = time.perf_counter(), time.process_time()
        features = pipeline(images)
        print(json.dumps({"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                          "images": len(images), "feature_dim": int(features.shape[1])}), flush=True)


if __name__ == "__main__":
    main()
