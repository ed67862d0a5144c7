#!/usr/bin/env bash
# Checks the compute adapter on a machine with NVIDIA GPUs and PyTorch (issue 10's GPU part):
# detection through NVML and through nvidia-smi, the `gpu`-marked tests, a CUDA job started by
# `flowlake run --gpus 1`, and the local scheduler keeping one-GPU jobs off each other's device
# and refusing more GPUs than the machine has. Run from the repository root with flowlake
# installed in `python3` (pip install -e '.[compute,dev]'); exits non-zero on the first failure.
set -euo pipefail
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== GPUs (nvidia-smi -L)"; nvidia-smi -L
echo "== detected through NVML";        python3 -c "from compute.machine import detect_gpus; print(detect_gpus())"
echo "== detected through nvidia-smi";  python3 -c "import sys; sys.modules['pynvml'] = None; from compute.machine import detect_gpus; print(detect_gpus())"

echo "== gpu-marked tests"
python3 -m pytest -p no:cacheprovider -q -m gpu tests/test_compute.py -rA

echo "== flowlake run --gpus 1 (a CUDA matrix product in a job)"
export FLOWLAKE_LAKE="$work/lake"
flowlake init
flowlake run --gpus 1 --name cuda-cli -- python3 -c "import os, torch; x = torch.ones(1024, 1024, device='cuda'); print('visible', os.environ['CUDA_VISIBLE_DEVICES'], 'sum', float((x @ x).sum()), torch.cuda.get_device_name(0))"
flowlake jobs

echo "== one-GPU jobs never share a device; more GPUs than the machine has is refused"
python3 - "$work/lake2" <<'PY'
import sys

import compute
import store
from compute.machine import detect_gpus
from store.errors import ResourceError

lake = store.open(sys.argv[1])
gpus = detect_gpus()


def hold() -> tuple[str, float, float]:
    import os
    import time

    import torch

    start = time.time()
    x = torch.randn(4096, 4096, device="cuda")
    (x @ x).sum().item()
    time.sleep(2)
    return os.environ["CUDA_VISIBLE_DEVICES"], start, time.time()


jobs = [
    compute.submit(hold, lake=lake, resources=compute.Resources(gpus=1), name=f"hold-{i}")
    for i in range(len(gpus) + 1)
]
spans = [job.wait(timeout=300) for job in jobs]
for i, (device, start, end) in enumerate(spans):
    for other, other_start, other_end in spans[i + 1 :]:
        overlap = start < other_end and other_start < end
        assert not (overlap and device == other), f"two jobs shared GPU {device}: {spans}"
print("devices used:", sorted({device for device, _, _ in spans}), "of", gpus)
try:
    compute.submit(hold, lake=lake, resources=compute.Resources(gpus=len(gpus) + 1))
except ResourceError as exc:
    print("refused at submit:", exc)
else:
    raise SystemExit(f"{len(gpus) + 1} GPUs on a {len(gpus)}-GPU machine was accepted")
PY
echo "== all GPU checks passed"
