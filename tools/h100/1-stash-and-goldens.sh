#!/usr/bin/env bash
# Device call A: stash the first GGUF half and the CUDA CLI; CUDA goldens as the smoke test.
set -x
S=/root/stash; mkdir -p $S
cp .stage/gguf.part1 $S/ && xz -dc .stage/rfgen-cli.xz > $S/rfgen-cli && chmod +x $S/rfgen-cli
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
ls /usr/local/cuda/lib64 2>/dev/null | grep -E "nvrtc|cudart" | head; ldconfig -p | grep -E "libnvrtc|libcuda\." | head
nproc; free -g | head -2
mkdir -p /root/fx && tar xf .stage/fixtures.tar -C /root/fx
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
time RFGEN_FIXTURES=/root/fx/fixtures timeout 300 $S/rfgen-cli bench --backend cuda --goldens /root/goldens 2>&1 | tail -40
ls -R /root/goldens | head -40
tar cf $OUT/goldens.tar -C /root goldens
echo A-DONE
