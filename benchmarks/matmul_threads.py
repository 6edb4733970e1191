"""Does a second thread speed up the ViT's matmuls? XLA (jax) against PyTorch, at 1 thread and at all cores.

The minimal reproduction behind the ViT phases of `throughput.py` with each
library's default threads: at these sizes torch's second thread halves a
matmul and XLA's does not. Each (library, threads) runs in its own process.

    python benchmarks/matmul_threads.py --json benchmarks/matmul_threads_results.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

# (rows, inner, columns): the teacher ViT's q/k/v and MLP matmuls at batch 8 x 65 tokens
# (96 wide, MLP 384), the CLIP's MLP (192 wide, MLP 768), and one large matmul.
SHAPES = [(520, 96, 384), (520, 384, 96), (520, 192, 768), (2048, 2048, 2048)]


def worker(library, threads):
    import numpy as np

    def median_ms(run):
        run()
        times = []
        for _ in range(30):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return round(float(np.median(times)) * 1e3, 3)

    out = {}
    for m, k, n in SHAPES:
        a, b = np.ones((m, k), "float32"), np.ones((k, n), "float32")
        if library == "jax":
            import jax

            a, b = jax.numpy.asarray(a), jax.numpy.asarray(b)
            matmul = jax.jit(lambda a, b: a @ b)
            out[f"{m}x{k}x{n}"] = median_ms(lambda: matmul(a, b).block_until_ready())
        else:
            import torch

            torch.set_num_threads(threads or os.cpu_count())
            a, b = torch.from_numpy(a), torch.from_numpy(b)
            out[f"{m}x{k}x{n}"] = median_ms(lambda: torch.matmul(a, b))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count()}
    results["loadavg_start"] = os.getloadavg()[0]
    for library in ("jax", "torch"):
        for threads in (1, os.cpu_count()):
            # jax: XLA's threads are its process's cores, so one thread is one core.
            prefix = ["taskset", "-c", "0"] if library == "jax" and threads == 1 else []
            command = prefix + [sys.executable, __file__, "--worker", library, str(threads)]
            line = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[f"{library}, {threads} thread(s)"] = json.loads(line)
    results["loadavg_end"] = os.getloadavg()[0]
    print("| matmul (ms) | " + " | ".join(k for k in results if "thread" in k) + " |")
    print("| --- " * 5 + "|")
    for shape in results["jax, 1 thread(s)"]:
        print(f"| {shape} | " + " | ".join(str(v[shape]) for k, v in results.items() if "thread" in k) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
