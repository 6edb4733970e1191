"""Images each process decodes per training step, with 1, 2 and 4 processes.

For each process count P it starts P Python processes at once (as torchrun
starts one per GPU), each building the training pipeline of process i of P on
the same synthetic world in two ways:

- `slice`: the global pipeline through `shard_batches` (what
  `strategy.distribute_dataset` does with an unsharded pipeline): every
  process decodes the whole global batch and keeps its rows;
- `shard`: the pipeline built with `shard=(i, P)` (`strategy.shard`): every
  process decodes only its rows.

Each process counts its calls of `decode_image` over one epoch (pass 0 of a
seeded `PassClock`) and checks that its `shard` batches equal its `slice`
batches exactly (images and labels). Decoded images per process per step
should stay at the global batch for `slice` and fall as 1/P for `shard`.

    python benchmarks/decode_per_process.py                  # 1, 2, 4 processes, ~2 min on 2 busy cores
    python benchmarks/decode_per_process.py --processes 1,2,4,8 --json out.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def worker(args):
    import numpy as np
    import tensorflow as tf

    from keras_cskd.data import PassClock
    from keras_cskd.data import images
    from keras_cskd.data import labeled_dataset
    from keras_cskd.data import read_ava
    from keras_cskd.distribute import shard_batches

    calls, lock = [0], threading.Lock()

    def bump():
        with lock:
            calls[0] += 1
        return np.int64(0)

    decode = images.decode_image

    def counted(data):  # file_image_stream looks decode_image up when its pipeline is built
        with tf.control_dependencies([tf.py_function(bump, [], tf.int64)]):
            return decode(data)

    images.decode_image = counted
    records = read_ava(args.world, val_fraction=0.0, test_fraction=0.0)
    index, count = args.worker

    def pipeline(shard):
        clock = PassClock(seed=0)
        return labeled_dataset(
            records, "train", image_size=args.image_size, batch_size=args.batch_size, passes=clock, shard=shard
        )

    out = {"index": index, "count": count}
    batches = {}
    for mode in ("slice", "shard"):
        ds = shard_batches(pipeline(None), count, index) if mode == "slice" else pipeline((index, count))
        calls[0] = 0
        start = time.perf_counter()
        batches[mode] = [tf.nest.flatten(b) for b in ds.as_numpy_iterator()]
        seconds = time.perf_counter() - start
        steps = len(batches[mode])
        out[mode] = {
            "steps": steps,
            "decoded": calls[0],
            "decoded_per_step": round(calls[0] / steps, 2),
            "rows_per_step": int(batches[mode][0][0].shape[0]),
            "epoch_s": round(seconds, 2),
        }
    out["equal"] = len(batches["slice"]) == len(batches["shard"]) and all(
        np.array_equal(a, b) for x, y in zip(batches["slice"], batches["shard"]) for a, b in zip(x, y)
    )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--num-images", type=int, default=128, help="labeled images (all in the training split)")
    parser.add_argument("--batch-size", type=int, default=16, help="the global batch")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--file-size", type=int, default=96, help="side of the synthetic JPEGs")
    parser.add_argument("--json", default=None)
    parser.add_argument("--world", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return None

    from keras_cskd.data import synthetic

    tmp = tempfile.mkdtemp(prefix="cskd_decode_")
    world = synthetic.make_world(
        os.path.join(tmp, "world"),
        num_labeled=args.num_images,
        num_unlabeled=0,
        image_size=args.file_size,
        test_fraction=0.0,
        seed=0,
    )
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "loadavg_start": load_start,
        "global_batch": args.batch_size,
        "images": args.num_images,
        "runs": [],
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    for count in [int(p) for p in args.processes.split(",")]:
        common = ["--world", world.ava_root, "--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
        procs = [
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), *common, "--worker", str(i), str(count)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(count)
        ]
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"a worker of {count} processes failed: exit codes {[p.returncode for p in procs]}")
        per_process = [json.loads(o.strip().splitlines()[-1]) for o in outs]
        run = {"processes": count, "per_process": per_process}
        for mode in ("slice", "shard"):
            run[mode] = {
                "decoded_per_process_per_step": max(p[mode]["decoded_per_step"] for p in per_process),
                "decoded_per_step_all_processes": round(sum(p[mode]["decoded_per_step"] for p in per_process), 2),
                "epoch_s_slowest_process": max(p[mode]["epoch_s"] for p in per_process),
            }
        run["all_equal"] = all(p["equal"] for p in per_process)
        results["runs"].append(run)
        print(
            json.dumps({k: run[k] for k in ("processes", "slice", "shard", "all_equal")}), file=sys.stderr, flush=True
        )
    with open("/proc/loadavg") as f:
        results["loadavg_end"] = " ".join(f.read().split()[:3])
    lines = [
        f"Global batch {args.batch_size}, {args.num_images} images, one epoch; {results['date']}, "
        f"{results['cores']} cores, load average {results['loadavg_start']} -> {results['loadavg_end']}",
        "",
        "| processes | decoded per process per step, slice | decoded per process per step, shard= | "
        "all processes per step, slice / shard= | shard= batches equal slices |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in results["runs"]:
        s, h = run["slice"], run["shard"]
        lines.append(
            f"| {run['processes']} | {s['decoded_per_process_per_step']} | {h['decoded_per_process_per_step']} | "
            f"{s['decoded_per_step_all_processes']} / {h['decoded_per_step_all_processes']} | {run['all_equal']} |"
        )
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
