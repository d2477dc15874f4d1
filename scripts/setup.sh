#!/usr/bin/env bash
# Installs what building and testing dlm needs on Debian (idempotent), then fetches test data.
#   apt: cmake clang libclang-dev (ggml + bindgen), python3-pip, python3-venv (the Python package's
#        tests run in a fresh environment), nodejs/npm (tokenizer test data),
#        libvulkan1 + mesa-vulkan-drivers (the Vulkan loader and lavapipe, a CPU Vulkan driver, so
#        the wgpu kernel tests run without a GPU), chromium (dlm-server's web page, tested headless)
#   PyPI: gguf numpy safetensors sentencepiece (independent checks of our files and tokenizers),
#         openai prometheus_client (the real client and metrics parser against dlm-server),
#         kubernetes-validate dockerfile-parse (deploy/ checked without a cluster or container engine),
#         playwright (drives the system chromium; it downloads no browser)
#   data: tests/fetch_data.py (npm llama-tokenizer-js, llama.cpp's vocab GGUF from the llama-cpp-python sdist)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found. Install Rust 1.85 or newer (https://rustup.rs), then re-run." >&2
  exit 1
fi

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v clang >/dev/null || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
command -v npm >/dev/null || need+=(npm)
ldconfig -p | grep -q 'libvulkan\.so\.1' || need+=(libvulkan1)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: apt-get install ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! python3 -c "import gguf, numpy, safetensors, sentencepiece, openai, prometheus_client, kubernetes_validate, dockerfile_parse, playwright" 2>/dev/null; then
  pkgs=(gguf==0.19.0 numpy safetensors sentencepiece==0.2.3 openai==3.60.0 prometheus_client==0.26.0 kubernetes-validate==1.37.0 dockerfile-parse==2.0.1 playwright==1.65.3)
  echo "setup: pip install ${pkgs[*]}" >&2
  python3 -m pip install --quiet "${pkgs[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "${pkgs[@]}"
fi

python3 tests/fetch_data.py
