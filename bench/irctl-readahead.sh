#!/usr/bin/env bash
# irctl whose `mount` gets a kernel readahead of RA_KB KiB (default 1024) once mounted, through
# the mount's /sys/class/bdi/<device>/read_ahead_kb (the kernel starts a FUSE mount at 128 KiB,
# whatever the mount asks). For trying the readahead side by side, as IRCTL of bench/seqread.sh:
#   RA_KB=1024 IRCTL=bench/irctl-readahead.sh BASELINE_IRCTL=target/release/irctl \
#     DATA=realistic bench/seqread.sh 100 5
# It execs the real irctl (REAL_IRCTL, this checkout's release build by default), keeping its pid.
REAL_IRCTL=${REAL_IRCTL:-$(cd "$(dirname "$0")/.." && pwd)/target/release/irctl}
if [ "${1:-}" = mount ]; then
  mountpoint_arg="${*: -1}"
  (
    for _ in $(seq 1000); do
      if mountpoint -q "$mountpoint_arg"; then
        echo "${RA_KB:-1024}" > "/sys/class/bdi/$(mountpoint -d "$mountpoint_arg")/read_ahead_kb"
        exit
      fi
      sleep 0.01
    done
  ) &
fi
exec "$REAL_IRCTL" "$@"
