#!/usr/bin/env bash
# GPU batch E, the last of four back-to-back calls (the first three copy
# .carry/llama-h100/{a.tar.xz,m.ad}, m.aa, m.ab into /tmp/kvs): the llama.cpp
# H100 run (tools/llamacpp/h100-run.sh, with and without llama.cpp's flash
# attention). Logs under $OUT.
set -u
mkdir -p /tmp/kvs && cp .carry/llama-h100/* /tmp/kvs/ 2>/dev/null
timeout 300 tools/llamacpp/h100-run.sh > $OUT/llama-h100.log 2>&1; echo rc=$?
grep -E "rep [0-9]|TTFT" $OUT/llama-h100.log | tail -40
