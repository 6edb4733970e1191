"""The `cskd` command.

    cskd demo [--out DIR]                 the whole recipe on a synthetic world
    cskd run CONFIG [--out DIR] [--distribute]   the whole recipe from a TOML config
    cskd config --example                 print a config with every field described
    cskd align | train-teacher | distill | evaluate [--config CONFIG] [--out DIR]
    cskd predict MODEL PATH... [--csv FILE] [--resume]
    cskd export MODEL --out DIR|FILE [--format tf_saved_model|onnx|litert|openvino] [--quantize int8 ...]
    cskd analyze MODEL... --images PATH... --out DIR

Every subcommand is added by one registration function of `COMMANDS`,
`register(subparsers)`, that sets `func` (args -> exit code); those that live
beside the code they drive (`keras_cskd.analysis.register_command`) are called
from there. The phase subcommands come from the recipe's phase table
(`keras_cskd.recipe.PHASE_TABLE`). A `func` raises its errors and `main`
prints them: user errors (`OSError`, `ValueError`, `RuntimeError`) as one line
with exit 1, usage errors (`argparse.ArgumentError`) with exit 2; Ctrl-C exits
130 after the running phase has saved its weights.

The command prints the library's own lines only. `--verbose` (before or after
the subcommand) also shows native libraries' log lines such as TensorFlow's
C++ start-up lines (hidden by `keras_cskd/__init__.py` for the `cskd`
script) and other libraries' Python warnings and log lines below errors.
"""

import argparse
import csv
import logging
import os
import sys
import time
import warnings

# === Handlers: args -> exit code ===


def _recipe_config(args):
    from keras_cskd import recipe

    config = recipe.RecipeConfig.load(args.config) if getattr(args, "config", None) else recipe.RecipeConfig()
    if getattr(args, "clip_preset", None):
        config.model.clip_preset = args.clip_preset
    if getattr(args, "distribute", False):
        config.train.distribute = True
    return config


def _run_recipe(args, phases=None):
    """Run the given recipe phases (all by default) into `args.out`."""
    from keras_cskd import recipe

    phases = phases or recipe.PHASES
    recipe.run(_recipe_config(args), args.out, phases=phases)
    if "evaluate" in phases:
        print(f"Report: {os.path.join(args.out, 'report.md')}")
    return 0


def _config(args):
    from keras_cskd import recipe

    config = recipe.RecipeConfig.load(args.config) if args.config else recipe.RecipeConfig()
    print(config.to_toml(comments=True))
    return 0


def _scored_csv(csv_path):
    """(header, paths) of a predictions CSV, (None, empty) if absent; a row cut off by a killed run is dropped."""
    if not os.path.exists(csv_path):
        return None, set()
    with open(csv_path, "rb+") as file:
        content = file.read()
        complete = content.rfind(b"\n") + 1
        if complete < len(content):  # the last row was being written when the run stopped
            file.truncate(complete)
    with open(csv_path, newline="") as file:
        rows = list(csv.reader(file))
    return (rows[0] if rows else None), {row[0] for row in rows[1:] if row}


def _predict(args):
    import keras
    import numpy as np

    from keras_cskd import data
    from keras_cskd.models import AestheticScorer

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive number of images, got {args.batch_size}")
    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image-size must be a positive number of pixels, got {args.image_size}")
    model = keras.saving.load_model(args.model) if os.path.exists(args.model) else None
    if model is None:
        raise FileNotFoundError(f"model not found: {args.model}")
    if isinstance(model, AestheticScorer):
        model = model.for_inference()
    files = data.list_images(*args.paths)
    if not files:
        raise ValueError(f"no images found in {', '.join(args.paths)}")
    size = args.image_size or model.input_shape[1]
    if size is None:
        raise ValueError("the model takes any image size; give --image-size")
    values = np.arange(1, model.output_shape[-1] + 1, dtype="float32")
    values = np.asarray(getattr(model, "bin_values", None) or values, dtype="float32")
    header = ["path", "mean_score"] + [f"p{i + 1}" for i in range(len(values))]
    found, done = _scored_csv(args.csv) if args.resume else (None, set())
    if done:
        if found != header:
            raise ValueError(f"--resume: {args.csv} is not a predictions CSV of this model ({len(values)} bins)")
        files = [path for path in files if path not in done]
        print(f"Resuming: {len(done)} image(s) already in {args.csv}, {len(files)} to score")
        if not files:
            return 0
    skipped = data.SkipCounter()
    dataset = data.unlabeled_dataset(
        data.ImageFiles(files),
        training=False,
        image_size=size,
        batch_size=args.batch_size,
        return_paths=True,
        dtype="float32",
        skipped=skipped,
    )
    progress = keras.utils.Progbar(len(files), unit_name="image", stateful_metrics=["images/s"])
    written, start = 0, time.perf_counter()
    with open(args.csv, "a" if done else "w", newline="") as file:
        writer = csv.writer(file)
        if not done:
            writer.writerow(header)
        for images, paths in dataset:
            distribution = keras.ops.convert_to_numpy(model(images.numpy(), training=False))
            for path, row in zip(paths.numpy(), distribution):
                writer.writerow([path.decode(), f"{float(row @ values):.4f}"] + [f"{p:.5f}" for p in row])
            file.flush()  # what is scored is on disk: a killed run continues with --resume
            written += len(distribution)
            progress.update(written, values=[("images/s", written / (time.perf_counter() - start))])
    progress.update(written, finalize=True)  # skipped files never arrive: end the bar on its own line
    examples = ", ".join(path for path, _ in skipped.examples)
    if not written and not done:
        os.remove(args.csv)
        raise RuntimeError(f"no image could be read: skipped all {skipped.count} file(s), e.g. {examples}")
    if skipped.count:
        print(f"warning: skipped {skipped.count} unreadable file(s), e.g. {examples}", file=sys.stderr)
    print(f"Scored {written} image(s) into {args.csv}")
    return 0


def _export(args):
    from keras_cskd import export

    summary = export.export(
        args.model,
        args.out,
        format=args.format,
        image_size=tuple(args.image_size) if args.image_size else None,
        quantize=args.quantize,
        representative=args.representative,
        representative_count=args.representative_count,
        eval_ava=args.eval_ava,
        eval_test_list=args.eval_test_list,
    )
    quantized = f", {args.quantize}" if args.quantize else ""
    print(f"Exported {args.model} -> {args.out} ({args.format}{quantized})")
    for path, size in sorted(summary["files"].items()):
        if args.format != "tf_saved_model" or path.endswith(".pb"):
            print(f"  {path}: {size / 1e6:.2f} MB" if size >= 1e6 else f"  {path}: {size / 1e3:.1f} kB")
    quality = summary.get("quality")
    if quality:
        print(f"Quality on {quality['images']} images of the {quality['split']!r} split of {args.eval_ava}:")
        print(f"  {'model':<26} {'SRCC':>7} {'PLCC':>7}")
        litert = f"LiteRT {args.quantize or 'float32'}"
        for name, key in (("Keras float32", "keras"), (litert, "litert")):
            print(f"  {name:<26} {quality[key]['srcc']:>7.4f} {quality[key]['plcc']:>7.4f}")
        print(f"  largest mean-score difference: {quality['max_abs_score_difference']:.4f}")
    if args.format == "tf_saved_model":
        print(f"Check it with: saved_model_cli show --dir {args.out} --tag_set serve --signature_def serving_default")
    return 0


# === Subcommands: one registration function each, in `cskd --help` order ===


def _register_demo(subparsers):
    demo = subparsers.add_parser("demo", help="the whole recipe on a synthetic world with small models (CPU, minutes)")
    demo.add_argument("--out", default="cskd_demo", help="output folder (default: cskd_demo)")
    demo.add_argument(
        "--clip-preset", help="a KerasHub CLIP preset (hub name or local dir) instead of a small random CLIP"
    )
    demo.add_argument("--distribute", action="store_true", help="data-parallel over all devices (see README)")
    demo.set_defaults(func=_run_recipe)


def _register_run(subparsers):
    run = subparsers.add_parser("run", help="the whole recipe from a TOML config (see 'cskd config --example')")
    run.add_argument("config", help="TOML config file")
    run.add_argument("--out", default="cskd_run", help="output folder (default: cskd_run)")
    run.add_argument("--distribute", action="store_true", help="data-parallel over all devices (overrides the config)")
    run.set_defaults(func=_run_recipe)


def _register_config(subparsers):
    config = subparsers.add_parser("config", help="print a config with every field and its description")
    config.add_argument("--example", action="store_true", help="print the built-in defaults (the demo's config)")
    config.add_argument("--config", help="print this config file with all defaults filled in")
    config.set_defaults(func=_config)


def _register_phases(subparsers):
    """One subcommand per `cskd` command of the recipe's phase table."""
    from keras_cskd import recipe

    for name, (phases, help_text) in recipe.phase_commands().items():
        phase = subparsers.add_parser(name, help=help_text)
        phase.add_argument("--config", help="TOML config file (default: the demo's config)")
        phase.add_argument("--out", default="cskd_run", help="the run's output folder (default: cskd_run)")
        phase.add_argument("--distribute", action="store_true", help="data-parallel over all devices")
        phase.set_defaults(func=lambda args, phases=phases: _run_recipe(args, phases))


def _register_predict(subparsers):
    predict = subparsers.add_parser("predict", help="score images and folders into a CSV")
    predict.add_argument("model", metavar="MODEL", help="a .keras AestheticScorer")
    predict.add_argument("paths", metavar="PATH", nargs="+", help="image files, folders or list files")
    predict.add_argument("--csv", default="predictions.csv", help="output CSV (default: predictions.csv)")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--image-size", type=int, help="default: the model's input size")
    predict.add_argument(
        "--resume", action="store_true", help="keep the rows already in --csv and score only the other images"
    )
    predict.set_defaults(func=_predict)


def _register_export(subparsers):
    export = subparsers.add_parser(
        "export",
        help="write a SavedModel (image bytes in), or an ONNX, LiteRT or OpenVINO file (0..255 pixels in)",
        description="tf_saved_model: a folder whose serving_default takes encoded image bytes. "
        "onnx (.onnx), litert (.tflite), openvino (.xml + .bin): input 'images' float32 (batch, H, W, 3) in 0..255, "
        "already decoded and in the evaluation view (keras_cskd.export.preprocess); outputs 'distribution' and "
        "'mean_score'. Any backend's model: SavedModel, LiteRT and OpenVINO are traced with TensorFlow, ONNX with "
        'PyTorch\'s exporter, in a subprocess when needed. pip install "keras-cskd[onnx]" or "keras-cskd[export]".',
    )
    export.add_argument("model", metavar="MODEL", help="a .keras AestheticScorer")
    export.add_argument(
        "--out",
        required=True,
        help="tf_saved_model: output folder, e.g. serving/aesthetics/1; onnx: model.onnx; litert: model.tflite; "
        "openvino: model.xml (model.bin beside it)",
    )
    export.add_argument(
        "--format",
        default="tf_saved_model",
        choices=("tf_saved_model", "onnx", "litert", "openvino"),
        help="default: tf_saved_model",
    )
    export.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the model's input size")
    export.add_argument(
        "--quantize", choices=("int8",), help="litert: full-integer post-training quantization (needs --representative)"
    )
    export.add_argument(
        "--representative", metavar="PATH", help="unlabeled images (folder or list file) that calibrate --quantize"
    )
    export.add_argument(
        "--representative-count", type=int, default=300, help="images taken from --representative (default: 300)"
    )
    export.add_argument(
        "--eval-ava",
        metavar="ROOT",
        help="litert: an AVA-format root; print SRCC/PLCC of the Keras model and the file on its test split",
    )
    export.add_argument(
        "--eval-test-list", metavar="FILE", help="with --eval-ava: the test list (default: a seeded split)"
    )
    export.set_defaults(func=_export)


def _register_analyze(subparsers):
    from keras_cskd import analysis

    analysis.register_command(subparsers)


COMMANDS = (
    _register_demo,
    _register_run,
    _register_config,
    _register_phases,
    _register_predict,
    _register_export,
    _register_analyze,
)


# Libraries whose warnings and log lines below errors `cskd` shows only with --verbose.
_OTHER_LIBRARIES = ("keras", "keras_hub", "keras_cv", "tensorflow", "jax", "jaxlib", "torch", "absl", "h5py")
_VERBOSE_HELP = "also show other libraries' warnings and log lines (TensorFlow's start-up lines included)"


def quiet_other_libraries():
    """Hide other libraries' Python warnings, and their log records below ERROR."""
    pattern = "|".join(_OTHER_LIBRARIES)
    warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")
    for name in _OTHER_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)


def build_parser():
    """The `cskd` parser: every function of `COMMANDS` adds its subcommand(s), each takes --verbose."""
    parser = argparse.ArgumentParser(
        prog="cskd",
        description="Train image-aesthetics models the CSKD way (arXiv 2307.15640).",
    )
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    for subparser in subparsers.choices.values():
        subparser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    return parser


def main(argv=None):
    """Run one `cskd` subcommand; returns its exit code.

    The one place that reports errors: a subcommand's `argparse.ArgumentError`
    is a usage error (exit 2), its `OSError`, `ValueError` (`ConfigError`
    included) or `RuntimeError` (`PhaseError` included) a user error (exit 1),
    each printed as one line; Ctrl-C exits 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if not args.verbose:
        quiet_other_libraries()
    try:
        return args.func(args)
    except argparse.ArgumentError as error:
        print(f"cskd {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as error:
        print(f"cskd {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cskd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
