#!/usr/bin/env bash
# gpu-session.sh — the CUDA checks of issue #4 on a lent GPU machine (the device tool),
# in as few calls as its limits allow (64 MiB carried per call, no network, no Node).
#
# Here, once:            scripts/gpu-session.sh prepare
#   writes .devcache/ (git-ignored): smollm2-135m split in two 47 MiB parts, the header of
#   qwen2.5-coder-1.5b (scripts/gguf_skeleton.py) and 32k token ids of real code.
# Device call 1 (carry .devcache/part1 .devcache/q15.skel .devcache/ids-q15.bin):
#   bash scripts/gpu-session.sh device-1
#   builds the native tree with nvcc (sm_80..90), runs specode_cuda_tests on the tiny model,
#   inflates the 1.5b stand-in, keeps part 1 of smollm2 in /tmp.
# Device call 2 (carry .devcache/part2), while the machine is still warm:
#   bash scripts/gpu-session.sh device-2
#   joins smollm2 and runs the consistency test on it, and the engine's C API (specode-run)
#   on both backends; then specode_cuda_bench at 4k and 32k for full, offload-all and
#   specache; results under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
models="${SPECODE_MODELS:-$HOME/.cache/specode/models}"
case "${1:-}" in
  prepare)
    mkdir -p .devcache/part1 .devcache/part2
    grep -qx '/.devcache/' .git/info/exclude 2>/dev/null || echo '/.devcache/' >> .git/info/exclude
    split -b 47M "$models/smollm2-135m.gguf" .devcache/smollm2.
    mv .devcache/smollm2.aa .devcache/part1/ && mv .devcache/smollm2.ab .devcache/part2/
    sha256sum "$models/smollm2-135m.gguf" | cut -d' ' -f1 > .devcache/part2/smollm2.sha256
    python3 scripts/gguf_skeleton.py make "$models/qwen2.5-coder-1.5b.gguf" .devcache/q15.skel
    node dist/cli.js bench speed --backend cuda --model qwen2.5-coder-1.5b --ctx 4096,32000 --ids-out .devcache/ids-q15.bin
    du -sh .devcache/*
    ;;
  device-1)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "${OUT:-/tmp}/gpu.txt"
    cmake -S native -B /tmp/nb -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECODE_CUDA=ON > /tmp/nb.log
    cmake --build /tmp/nb -j 16 >> /tmp/nb.log 2>&1 || { tail -40 /tmp/nb.log; exit 1; }
    cp .devcache/part1/smollm2.aa /tmp/
    python3 scripts/gguf_skeleton.py inflate .devcache/q15.skel /tmp/q15-random.gguf
    cp .devcache/ids-q15.bin /tmp/
    /tmp/nb/specode_cuda_tests 2>&1 | tee "${OUT:-/tmp}/cuda-tests-tiny.txt"
    ;;
  device-2)
    cat /tmp/smollm2.aa .devcache/part2/smollm2.ab > /tmp/smollm2.gguf
    [ "$(sha256sum /tmp/smollm2.gguf | cut -d' ' -f1)" = "$(cat .devcache/part2/smollm2.sha256)" ] || { echo 'smollm2: sha256 differs'; exit 1; }
    SPECODE_CUDA_TEST_MODEL=/tmp/smollm2.gguf /tmp/nb/specode_cuda_tests 2>&1 | tee "${OUT:-/tmp}/cuda-tests-smollm2.txt"
    # The engine's C API end to end (what the server calls): 64 greedy tokens per backend and policy.
    # -P 16: the CPU's fp16 scales and zeros, the only format CUDA has (its automatic choice is 8 at 2 bits).
    for k in full specache; do
      for b in cpu cuda; do
        /tmp/nb/specode-run /tmp/smollm2.gguf -b "$b" -k "$k" -t 16 -p 1500 -n 64 -P 16 > "/tmp/run-$k-$b.txt" 2>> "${OUT:-/tmp}/c-api-smollm2.txt"
      done
      cmp -s "/tmp/run-$k-cpu.txt" "/tmp/run-$k-cuda.txt" && r=same || r=DIFFER
      { echo "c api smollm2 $k: cpu and cuda tokens $r"; head -c 400 "/tmp/run-$k-cpu.txt"; head -c 400 "/tmp/run-$k-cuda.txt"; } |
        tee -a "${OUT:-/tmp}/c-api-smollm2.txt"
    done
    /tmp/nb/specode_cuda_bench --model /tmp/q15-random.gguf --ids /tmp/ids-q15.bin --ctx 4096,32000 \
      --policies full,offload-all,specache --steps 32 --warmup 4 > "${OUT:-/tmp}/cuda-bench-q15.json"
    cat "${OUT:-/tmp}/cuda-bench-q15.json"
    ;;
  *)
    sed -n 2,20p "$0"
    exit 1
    ;;
esac
