"""Minimal reproduction: Keras rematerialization recomputes random layers with new draws.

A small KerasHub Swin (stochastic depth on, as KerasHub's default `drop_path=0.1`)
trains one step twice from the same weights and seed: as built, and built inside
`keras.RematScope(mode="list_of_layers", layer_names=[its blocks])`, Keras's own
rematerialization. The two steps should give the same weights; with drop path on,
Keras draws the recomputed block's random mask anew in the backward pass. Then the
same with `drop_path=0`. One process per backend:

    python benchmarks/remat_random.py --json benchmarks/remat_random_results.json

This is why `keras_cskd.backbones.rematerialize` refuses blocks that draw random
numbers (docs/performance.md, "Memory").
"""

import argparse
import json
import os
import subprocess
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def one_step(drop_path, remat):
    import keras
    import keras_hub
    import numpy as np

    keras.utils.set_random_seed(0)
    names = ["blocks_0", "blocks_1"]
    with keras.RematScope(mode="list_of_layers" if remat else None, layer_names=names):
        backbone = keras_hub.models.SwinTransformerBackbone(
            image_shape=(32, 32, 3),
            embed_dim=16,
            depths=[2, 2],
            num_heads=[2, 2],
            window_size=4,
            patch_size=2,
            drop_path=drop_path,
        )
    x = keras.Input((32, 32, 3))
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.Flatten()(backbone(x))))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.uniform(size=(4, 32, 32, 3)).astype("float32"), np.ones((4, 3), "float32"))
    return [np.asarray(w) for w in model.get_weights()]


def worker():
    import numpy as np

    result = {}
    for drop_path in (0.1, 0.0):
        plain = one_step(drop_path, remat=False)
        try:
            recomputed = one_step(drop_path, remat=True)
        except Exception as error:  # the failure itself is the finding
            result[f"drop_path={drop_path}"] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
            continue
        difference = max(float(np.abs(a - b).max()) for a, b in zip(plain, recomputed))
        result[f"drop_path={drop_path}"] = f"largest weight difference after one step {difference:.2e}"
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker()))
        return
    import keras
    import keras_hub

    results = {"keras": keras.__version__, "keras_hub": keras_hub.__version__, "backends": {}}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend)
        done = subprocess.run(
            [sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True, check=True
        )
        results["backends"][backend] = json.loads(done.stdout.strip().splitlines()[-1])
        print(backend, results["backends"][backend], flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
