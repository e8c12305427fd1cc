# The CPU recipe's model and batch, shared by runcpu.sh and bench_quality.sh (sourced, not run).
# A depth-3 model (192 wide, 3 heads, 1 KV head) on 256-token sequences: about the compute-optimal size for ten
# minutes of two CPU cores.
CPU_FLAGS=(--depth=3 --seq-len=256 --device-batch-size=16 --total-batch-size=8192 --time-budget="${MINUTES:-10}"
           --eval-tokens=131072 --sample-every=0)
CPU_VOCAB=4096
