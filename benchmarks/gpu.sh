#!/usr/bin/env bash
# Paper-size throughput on one CUDA machine: every phase of benchmarks/throughput.py
# (--sizes paper: CLIP ViT-B/16, Swin-B teacher, MobileNetV2 student, 224 px) on
# tensorflow, tensorflow + XLA, jax and torch, and the plain-PyTorch peer.
#
#   benchmarks/gpu.sh                      # install into fresh venvs, then run (~8 min after the install)
#   benchmarks/gpu.sh --skip-install       # venvs already there
#   benchmarks/gpu.sh --dry-run            # print the commands, run nothing
#   benchmarks/gpu.sh --wheelhouse DIR     # install offline from wheels fetched elsewhere (pip download)
#
# Each backend gets its own venv (the CUDA wheels of tensorflow[and-cuda], jax[cuda12]
# and torch pin different cuDNN / cuBLAS builds). Each runner runs under its own time
# limit (`timeout`), so one slow backend cannot eat the budget; a runner that fails or
# runs out of time is recorded in the JSON with its error and the phases it finished,
# and the script goes on. Output: $OUT/gpu_results.json and $OUT/gpu_results.md.
#
# Every runner uses bf16 where the GPU has it (compute capability >= 8.0; --precision
# to choose): keras-cskd as the mixed_bfloat16 dtype policy, the peer as
# torch.autocast(bfloat16), both with float32 weights. The peer runs on the GPU.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/benchmarks/gpu_results"
VENVS="${CSKD_GPU_VENVS:-$HOME/.cache/cskd-gpu-venvs}"
RUNNERS="tensorflow,tensorflow-xla,jax,torch,peer"
BUDGET=450          # seconds for all runners together (the install is timed apart)
INSTALL_LIMIT=900   # seconds per venv install
PRECISION=auto      # auto | bf16 | fp32
TORCH_INDEX="https://download.pytorch.org/whl/cu124"
DRY_RUN=0
SKIP_INSTALL=0
WHEELHOUSE=""
PHASES="align,align_cached,align_student,align_student_cached,finetune,distill,distill_cached,inference,inference_folded,clip_forward"
TIMING=(--warmup 2 --repeats 3 --steps 2 --seconds 4 --cache-epochs 0)

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --out) OUT="$2"; shift ;;
    --venvs) VENVS="$2"; shift ;;
    --runners) RUNNERS="$2"; shift ;;
    --phases) PHASES="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --precision) PRECISION="$2"; shift ;;
    --torch-index) TORCH_INDEX="$2"; shift ;;
    --wheelhouse) WHEELHOUSE="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

IFS=, read -r -a RUNNER_LIST <<< "$RUNNERS"
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
: > "$LOG"

# Print a command (dry run) or run it, logging either way.
run() {
  printf '+' >> "$LOG"; printf ' %q' "$@" >> "$LOG"; echo >> "$LOG"
  if [[ $DRY_RUN == 1 ]]; then printf '+'; printf ' %q' "$@"; echo; return 0; fi
  "$@"
}

say() { echo "[gpu.sh $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# === The machine ===

GPU_NAME="none"
CAPABILITY="0.0"
if command -v nvidia-smi > /dev/null 2>&1; then
  GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 || true)"
  CAPABILITY="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 || echo 0.0)"
elif [[ $DRY_RUN == 0 ]]; then
  say "no nvidia-smi: this script is for a CUDA machine (use --dry-run to see what it runs)"
  exit 1
fi
if [[ $PRECISION == auto ]]; then
  if awk -v c="$CAPABILITY" 'BEGIN { exit !(c + 0 >= 8.0) }'; then PRECISION=bf16; else PRECISION=fp32; fi
  [[ $DRY_RUN == 1 && $GPU_NAME == none ]] && PRECISION=bf16
fi
POLICY=""
[[ $PRECISION == bf16 ]] && POLICY="mixed_bfloat16"
say "GPU: $GPU_NAME (compute capability $CAPABILITY); keras-cskd precision: $PRECISION"

# === Install: one venv per backend ===

venv_of() {  # runner -> venv name
  case "$1" in
    tensorflow|tensorflow-xla) echo tensorflow ;;
    jax) echo jax ;;
    torch|peer) echo torch ;;
    *) echo "unknown runner: $1" >&2; return 1 ;;
  esac
}

PIP_EXTRA=(--quiet --disable-pip-version-check)
[[ -n $WHEELHOUSE ]] && PIP_EXTRA+=(--no-index --find-links "$WHEELHOUSE")
declare -A INSTALL_STATUS=()

install_venv() {  # name -> 0 when the venv is ready
  local name="$1" py="$VENVS/$1/bin/python"
  run timeout "$INSTALL_LIMIT" python3 -m venv "$VENVS/$name" || return 1
  run timeout "$INSTALL_LIMIT" "$py" -m pip install "${PIP_EXTRA[@]}" --upgrade pip || return 1
  case "$name" in
    tensorflow)  # TensorFlow with its CUDA libraries from pip
      run timeout "$INSTALL_LIMIT" "$py" -m pip install "${PIP_EXTRA[@]}" "tensorflow[and-cuda]>=2.18" "$REPO" ;;
    jax)  # jax with CUDA 12 from pip; TensorFlow (tf.data) stays on the CPU
      run timeout "$INSTALL_LIMIT" "$py" -m pip install "${PIP_EXTRA[@]}" "jax[cuda12]>=0.4.30" "$REPO" ;;
    torch)  # torch's CUDA build first, from PyTorch's index, then the repository
      local index=(--index-url "$TORCH_INDEX")
      [[ -n $WHEELHOUSE ]] && index=()
      run timeout "$INSTALL_LIMIT" "$py" -m pip install "${PIP_EXTRA[@]}" "${index[@]}" "torch>=2.4" &&
        run timeout "$INSTALL_LIMIT" "$py" -m pip install "${PIP_EXTRA[@]}" "$REPO" ;;
  esac
}

INSTALL_START=$SECONDS
declare -A NEEDED=()
for runner in "${RUNNER_LIST[@]}"; do NEEDED[$(venv_of "$runner")]=1; done
for name in "${!NEEDED[@]}"; do
  if [[ $SKIP_INSTALL == 1 ]]; then
    if [[ -x $VENVS/$name/bin/python || $DRY_RUN == 1 ]]; then INSTALL_STATUS[$name]=ok; else INSTALL_STATUS[$name]="no venv at $VENVS/$name"; fi
    continue
  fi
  say "installing the $name venv into $VENVS/$name"
  if [[ $DRY_RUN == 1 ]]; then
    install_venv "$name"
    INSTALL_STATUS[$name]=ok
  elif install_venv "$name" >> "$LOG" 2>&1; then
    INSTALL_STATUS[$name]=ok
  else
    INSTALL_STATUS[$name]="install failed (exit $?), see gpu.log"
  fi
  say "  $name: ${INSTALL_STATUS[$name]}"
done
INSTALL_S=$((SECONDS - INSTALL_START))

# === Run: one runner per process, each under its own limit ===

# Seconds per runner: XLA compiles take longest, the peer is eager.
declare -A WEIGHT=([tensorflow]=20 [tensorflow-xla]=26 [jax]=24 [torch]=18 [peer]=12)
TOTAL_WEIGHT=0
for runner in "${RUNNER_LIST[@]}"; do TOTAL_WEIGHT=$((TOTAL_WEIGHT + ${WEIGHT[$runner]:-20})); done

RUN_START=$SECONDS
for runner in "${RUNNER_LIST[@]}"; do
  name="$(venv_of "$runner")"
  status_file="$OUT/$runner.status"
  limit=$((BUDGET * ${WEIGHT[$runner]:-20} / TOTAL_WEIGHT))
  left=$((BUDGET - (SECONDS - RUN_START)))
  ((limit > left)) && limit=$left
  if [[ ${INSTALL_STATUS[$name]} != ok ]]; then
    echo "skipped: ${INSTALL_STATUS[$name]}" > "$status_file"
    say "$runner: skipped (${INSTALL_STATUS[$name]})"
    continue
  fi
  if ((limit < 20)); then
    echo "skipped: ${limit} s left of the ${BUDGET} s budget" > "$status_file"
    say "$runner: skipped (${limit} s left)"
    continue
  fi
  policy="$POLICY"
  say "$runner: up to $limit s (dtype policy: ${policy:-float32})"
  precision=()
  [[ -n $policy ]] && precision=(--mixed-precision "$policy")
  cmd=(env TF_FORCE_GPU_ALLOW_GROWTH=true TF_CPP_MIN_LOG_LEVEL=3
    timeout --kill-after=10 "$limit" "$VENVS/$name/bin/python" "$REPO/benchmarks/throughput.py"
    --sizes paper --runners "$runner" --phases "$PHASES" "${TIMING[@]}" "${precision[@]}"
    --json "$OUT/$runner.json" --markdown "$OUT/$runner.md")
  if [[ $DRY_RUN == 1 ]]; then
    run "${cmd[@]}"
    rc=0
  else
    set +e
    run "${cmd[@]}" > "$OUT/$runner.log" 2>&1
    rc=$?
    set -e
  fi
  case $rc in
    0) echo "ok" > "$status_file" ;;
    124|137) echo "timed out after $limit s" > "$status_file" ;;
    *) echo "exit $rc" > "$status_file" ;;
  esac
  say "$runner: $(cat "$status_file")"
done
RUN_S=$((SECONDS - RUN_START))

# === One JSON, one Markdown table ===

if [[ $DRY_RUN == 1 ]]; then
  say "dry run: would merge $OUT/<runner>.json into $OUT/gpu_results.json and gpu_results.md"
  exit 0
fi
python3 - "$OUT" "$REPO" "$RUNNERS" "$GPU_NAME" "$CAPABILITY" "$PRECISION" "$INSTALL_S" "$RUN_S" "$BUDGET" << 'EOF'
import json, os, re, sys, time

out, repo, runners, gpu, capability, precision, install_s, run_s, budget = sys.argv[1:]
sys.path.insert(0, os.path.join(repo, "benchmarks"))
import throughput  # stdlib imports only at the top

results = {
    "sizes": "paper",
    "config": throughput.SIZES["paper"],
    "gpu": gpu,
    "compute_capability": capability,
    "precision": precision,
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "install_s": int(install_s),
    "run_s": int(run_s),
    "budget_s": int(budget),
    "runners": [],
    "failures": [],
}
line = re.compile(r"^\s+(\S+)\s+(\S+)\s+([0-9.]+) img/s\s*$")
for runner in runners.split(","):
    status = open(os.path.join(out, f"{runner}.status")).read().strip()
    path = os.path.join(out, f"{runner}.json")
    entry = None
    if status == "ok" and os.path.exists(path):
        entry = json.load(open(path))["runners"][0]
    if entry is None or "phases" not in entry:
        phases = {}
        log = os.path.join(out, f"{runner}.log")
        if os.path.exists(log):  # the phases finished before the failure or the limit
            for text in open(log, errors="replace"):
                m = line.match(text)
                if m:
                    phases[m.group(2)] = {"images_per_s": float(m.group(3))}
        tail = open(log, errors="replace").read()[-2000:] if os.path.exists(log) else ""
        error = status if status != "ok" else (entry or {}).get("error", "no result")
        results["failures"].append({"runner": runner, "error": error, "finished_phases": sorted(phases), "log_tail": tail})
        entry = {"runner": runner, "error": error, "partial": True, "phases": phases, "peak_rss_mb": None}
        if not phases:
            entry.pop("phases")
    results["runners"].append(entry)
table = throughput.markdown(results)
table = "\n".join(t for t in table.splitlines() if not t.startswith("Threads per runner")).rstrip()
lines = [
    f"Paper sizes (CLIP ViT-B/16, Swin-B, MobileNetV2, 224 px, batch {results['config']['batch_size']}) on {gpu}, "
    f"{results['date']}; every runner {precision}; images/s. Install {install_s} s, runs {run_s} s "
    f"(budget {budget} s).",
    "",
    table,
]
for f in results["failures"]:
    lines.append(f"\n- {f['runner']}: {f['error']}; finished phases: {', '.join(f['finished_phases']) or 'none'}")
with open(os.path.join(out, "gpu_results.json"), "w") as fh:
    json.dump(results, fh, indent=1)
with open(os.path.join(out, "gpu_results.md"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
say "wrote $OUT/gpu_results.json and $OUT/gpu_results.md"
