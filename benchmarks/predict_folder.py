"""`cskd predict` over a generated folder of JPEGs: rate, peak memory, kill and resume.

Writes `--images` small JPEGs (96x64, noise over a gradient, quality 90) into a
temporary folder, saves a scorer (the demo's `small_cnn` student at 32 px,
random weights, or `--model PATH`), then runs `cskd predict` in fresh
processes of the chosen backend:

1. on the first tenth of the images, then on all of them: wall time, images/s
   and the process's peak resident memory (`ru_maxrss`), so a memory that grows
   with the folder shows as a difference; the rate once started is the extra
   nine tenths over the extra time;
2. on all of them again, killed (SIGKILL) once half the rows are written, then `--resume`d: the CSV
   must end with one row per image, each scored once, equal to the first run's.

    python benchmarks/predict_folder.py                       # 20,000 images, tensorflow
    KERAS_BACKEND=jax python benchmarks/predict_folder.py --images 5000 --json out.json
"""

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Runs `cskd predict` in this process and prints its peak resident memory.
_CHILD = (
    "import resource, sys\n"
    "from keras_cskd.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)


def write_jpegs(folder, count, seed=0):
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 160, 96)[None, :, None]
    paths = []
    for i in range(count):
        pixels = np.clip(gradient + rng.normal(60, 40, (64, 96, 3)), 0, 255).astype("uint8")
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def save_model(path, image_size):
    import keras

    from keras_cskd.models import AestheticScorer
    from keras_cskd.recipe import build_backbone

    keras.utils.set_random_seed(0)
    AestheticScorer(build_backbone("small_cnn", image_size)).save(path)


def predict_command(model, inputs, out_csv, batch_size, resume=False):
    command = [
        sys.executable,
        "-c",
        _CHILD,
        "predict",
        model,
        inputs,
        "--csv",
        out_csv,
        "--batch-size",
        str(batch_size),
    ]
    return command + (["--resume"] if resume else [])


def timed_run(command):
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"cskd predict failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    peak = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    return seconds, int(peak[0]) / 1024.0


def rows(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))[1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--model", default=None, help="a .keras scorer (default: a random small_cnn student)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="cskd_predict_bench_")
    folder = os.path.join(work, "images")
    start = time.perf_counter()
    paths = write_jpegs(folder, args.images)
    print(f"wrote {len(paths)} JPEGs in {time.perf_counter() - start:.0f}s", flush=True)
    model = args.model or os.path.join(work, "student.keras")
    if not args.model:
        save_model(model, args.image_size)
    tenth = os.path.join(work, "tenth.txt")
    with open(tenth, "w") as file:
        file.write("\n".join(paths[: len(paths) // 10]) + "\n")

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "cpus": os.cpu_count(),
        "load_average_before": round(os.getloadavg()[0], 2),
        "batch_size": args.batch_size,
        "runs": {},
    }
    for label, inputs, count in (("tenth", tenth, len(paths) // 10), ("all", folder, len(paths))):
        out_csv = os.path.join(work, f"{label}.csv")
        seconds, peak_mb = timed_run(predict_command(model, inputs, out_csv, args.batch_size))
        scored = len(rows(out_csv))
        assert scored == count, f"{label}: {scored} rows for {count} images"
        report["runs"][label] = {
            "images": count,
            "seconds": round(seconds, 1),
            "images_per_second": round(count / seconds, 1),
            "peak_rss_mb": round(peak_mb, 1),
        }
        print(label, report["runs"][label], flush=True)
    tenth_run, all_run = report["runs"]["tenth"], report["runs"]["all"]
    # The rate once started: what the extra nine tenths cost (start-up and model loading cancel out).
    report["images_per_second_after_start_up"] = round(
        (all_run["images"] - tenth_run["images"]) / max(all_run["seconds"] - tenth_run["seconds"], 1e-9), 1
    )

    # Kill once about half the rows are on disk, then resume.
    out_csv = os.path.join(work, "killed.csv")
    process = subprocess.Popen(
        predict_command(model, folder, out_csv, args.batch_size),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while process.poll() is None and not (os.path.exists(out_csv) and len(rows(out_csv)) >= len(paths) // 2):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = len(rows(out_csv))
    seconds, _ = timed_run(predict_command(model, folder, out_csv, args.batch_size, resume=True))
    resumed = rows(out_csv)
    reference = {row[0]: row for row in rows(os.path.join(work, "all.csv"))}
    assert len(resumed) == len(paths) == len({row[0] for row in resumed}), "resume: missing or repeated rows"
    assert all(reference[row[0]] == row for row in resumed), "resume: a row differs from the uninterrupted run"
    report["kill_and_resume"] = {"rows_when_killed": before, "resume_seconds": round(seconds, 1), "rows": len(resumed)}
    print("kill and resume", report["kill_and_resume"], flush=True)
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
