"""Does the input pipeline keep up with training?

Writes a synthetic aesthetics world (JPEG files + AVA.txt), then measures:

- generation rate of the synthetic world (images/min, one core);
- decode rate: files read + decoded (+ EXIF check), images/s;
- train pipeline rate: `labeled_dataset(..., training=True)` end to end
  (shuffle, decode, random crop, resize, flip, batch), images/s;
  each on all cores and on one thread, reported per core;
- training step rate of a small model (MobileNetV2, the paper's student
  family, random weights) on one batch of the same shape, images/s.

The pipeline does not starve training while its rate exceeds the step rate.

    python benchmarks/input_pipeline.py                      # ~2000 images, well under 2 min
    python benchmarks/input_pipeline.py --num-images 20000 --json out.json
    KERAS_BACKEND=jax python benchmarks/input_pipeline.py --image-size 128
"""

import argparse
import json
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_cskd.data import decode_image
from keras_cskd.data import labeled_dataset
from keras_cskd.data import read_ava
from keras_cskd.data import synthetic


def _rate(make_dataset, count_fn, repeats, single_thread):
    """Best images/s over `repeats` full passes (after one warm-up pass)."""
    ds = make_dataset()
    if single_thread:
        options = tf.data.Options()
        options.threading.private_threadpool_size = 1
        options.threading.max_intra_op_parallelism = 1
        ds = ds.with_options(options)
    count_fn(ds)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = count_fn(ds)
        best = max(best, n / (time.perf_counter() - start))
    return best


def _count_images(ds):
    return sum(int(tf.shape(tf.nest.flatten(batch)[0])[0]) for batch in ds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=2000, help="labeled images in the synthetic world")
    parser.add_argument("--file-size", type=int, default=128, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=96, help="side of the images the pipeline yields")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per measurement (best is kept)")
    parser.add_argument("--model-steps", type=int, default=10, help="timed training steps (at most)")
    parser.add_argument("--model-seconds", type=float, default=20.0, help="stop timing steps after this long")
    parser.add_argument("--out-dir", default=None, help="where to write the world (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file ('-' for stdout)")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="cskd_bench_")
    start = time.perf_counter()
    world = synthetic.make_world(
        out_dir, num_labeled=args.num_images, num_unlabeled=0, image_size=args.file_size, seed=0
    )
    generation = args.num_images / (time.perf_counter() - start) * 60
    records = read_ava(world.ava_root, val_fraction=0.0, test_fraction=0.0)

    def decode_only():
        ds = tf.data.Dataset.from_tensor_slices(records.paths)
        ds = ds.map(lambda p: decode_image(tf.io.read_file(p))[:1, :1], num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(256)

    def train_pipeline():
        return labeled_dataset(records, image_size=args.image_size, batch_size=args.batch_size, training=True, seed=0)

    results = {
        "backend": keras.backend.backend(),
        "cores": cores,
        "num_images": args.num_images,
        "file_size": args.file_size,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "generation_images_per_min": round(generation),
    }
    for name, make in [("decode", decode_only), ("train_pipeline", train_pipeline)]:
        all_cores = _rate(make, _count_images, args.repeats, single_thread=False)
        one = _rate(make, _count_images, args.repeats, single_thread=True)
        results[f"{name}_images_per_s"] = round(all_cores)
        results[f"{name}_images_per_s_per_core"] = round(all_cores / cores)
        results[f"{name}_images_per_s_one_thread"] = round(one)

    # Training step rate of a small model on one batch of the same shape.
    images, dists = next(iter(train_pipeline()))
    model = keras.Sequential(
        [
            keras.Input((args.image_size, args.image_size, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1),
            keras.applications.MobileNetV2(
                input_shape=(args.image_size, args.image_size, 3), include_top=False, weights=None, pooling="avg"
            ),
            keras.layers.Dense(records.num_bins, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x, y = np.asarray(images), np.asarray(dists)
    for _ in range(2):  # compile and warm up
        model.train_on_batch(x, y)
    start, steps = time.perf_counter(), 0
    while steps < args.model_steps and (steps == 0 or time.perf_counter() - start < args.model_seconds):
        model.train_on_batch(x, y)
        steps += 1
    step_time = (time.perf_counter() - start) / steps
    results["model"] = "MobileNetV2 (random init) + Dense softmax"
    results["train_step_s"] = round(step_time, 4)
    results["train_step_images_per_s"] = round(args.batch_size / step_time)
    ratio = results["train_pipeline_images_per_s"] / results["train_step_images_per_s"]
    results["pipeline_over_training"] = round(ratio, 2)
    results["pipeline_keeps_up"] = results["pipeline_over_training"] >= 1.0

    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    if args.json == "-":
        print(json.dumps(results, indent=1))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
