#!/usr/bin/env bash
# Fill bench/wheels/ (git-ignored) with what bench/gpu_check.sh installs on the GPU machine, which
# has torch, accelerate, tokenizers, safetensors, numpy, pyyaml and rich but no network: the
# versions this project pins that its image lacks or holds too old. TRL 1.12 (the last TRL with a
# PPOTrainer, for the side-by-side PPO) goes in a folder of its own: two versions of one package
# in a single `pip install` stop the whole install.
#   bash bench/fetch_gpu_wheels.sh      # then: du -sh bench/wheels (tree + wheels must stay < 64 MiB)
set -euo pipefail
cd "$(dirname "$0")"
download() {
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any "$@"
}
download -d wheels \
    bitsandbytes==0.50.2 transformers==5.25.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 \
    dill==0.4.1 multiprocess==0.70.19 pydantic==2.13.4 pydantic_core==2.46.4 \
    annotated-types==0.7.0 typing-inspection==0.4.2 sqlalchemy==2.1.9
download -d wheels/trl-1.12 trl==1.12.0
# bitsandbytes ships kernels for every CUDA, ROCm and XPU release (129 MB unpacked); the H200's
# torch is built for CUDA 13, so keep the CUDA 13 and CPU libraries alone: 43 MB of wheel down to
# about 4 MB, which is what lets everything travel.
python3 - wheels/bitsandbytes-*.whl <<'PY'
import re, sys, zipfile
from pathlib import Path

path = Path(sys.argv[1])
unneeded = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[12]\d|rocm\d+|xpu\d+)\.so")
with zipfile.ZipFile(path) as wheel:
    kept = [(info, wheel.read(info)) for info in wheel.infolist() if not unneeded.fullmatch(info.filename)]
slim = path.with_suffix(".slim")
with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as wheel:
    for info, data in kept:
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if not unneeded.match(line)).encode()
        wheel.writestr(info, data, zipfile.ZIP_DEFLATED)
slim.replace(path)
PY
du -sh wheels
