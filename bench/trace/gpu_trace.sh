#!/bin/bash
# bench/trace/gpu_trace.sh PACK.tar.xz TOKENIZER.gguf - on the lent GPU machine: kvstashd +
# kvs-serve (8B random weights, the tokenizer of TOKENIZER) + kvs-bench-trace, chat then rag,
# logs under $OUT. Knobs (env): CTEST=1 (run the packed gpu tests first), CRATE/CN (chat sessions
# per s / count), RRATE/RN (rag), MAXOUT, RAM (RAM tier), EVICT (cost|lru). See bench/RESULTS.md.
set -x
nvidia-smi -L; df -h /dev/shm /tmp | tee $OUT/env.txt
export KVS_GPU_PACK=$(tools/gpu unpack "$1")
[ -n "$CTEST" ] && timeout 300 tools/gpu ctest --log $OUT/gpu-ctest.log > $OUT/gpu-ctest-summary.txt 2>&1
D=/tmp/kd; rm -rf $D; mkdir -p $D
shm=off; [ "$(df -B1G --output=avail /dev/shm | tail -1)" -gt 40 ] && shm=on
tools/gpu run kvstashd --data-dir=$D/db --listen=ipc://$D/d.sock --http=127.0.0.1:17879 \
  --ram_bytes=${RAM:-32G} --shm=$shm --eviction=${EVICT:-cost} --log-level=error > $OUT/kvstashd.log 2>&1 &
sleep 2
tools/gpu run kvs-serve --random-8b --model "$2" --listen 127.0.0.1:18000 \
  --kvstash ipc://$D/d.sock --ctx 16384 --max-tokens 16 > $OUT/serve.log 2>&1 &
for i in $(seq 180); do python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:18000/health',timeout=2)" 2>/dev/null && break; sleep 1; done
echo "shm=$shm" >> $OUT/env.txt
export KVS_RAG_DATA=${KVS_RAG_DATA:-$PWD/data/rag/musique_s.json.zst} # the checkout's copy
B="tools/gpu run kvs-bench-trace --serve 127.0.0.1:18000 --metrics 127.0.0.1:17879"
timeout 230 $B --workload chat --rate ${CRATE:-0.4} --requests ${CN:-16} --turns 2-12 --think 1 --max-out ${MAXOUT:-16} > $OUT/trace_chat.log 2>&1
timeout 200 $B --workload rag --rate ${RRATE:-2} --requests ${RN:-60} --passages 5-10 --max-out ${MAXOUT:-16} > $OUT/trace_rag.log 2>&1
python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:18000/health').read().decode())" >> $OUT/env.txt
pkill -f kvs-serve; pkill -f kvstashd; sleep 1
tail -3 $OUT/serve.log
