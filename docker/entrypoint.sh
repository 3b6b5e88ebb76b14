#!/bin/sh
# The image's entry point. `serve` (the default) runs `embedgate serve` with one worker per CPU this
# container may use, or $EMBEDGATE_WORKERS; any other command runs as `embedgate <command>`.
# exec: the gateway itself gets SIGTERM and drains (server.drain_grace, server.drain_timeout).
set -eu

# CPUs we may use: the affinity mask (what nproc counts), capped by a cgroup CPU quota (docker --cpus,
# a Kubernetes CPU limit), which nproc does not see. (nproc also obeys OMP_NUM_THREADS: not here.)
cpus() {
  n=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  quota="" period=""
  if [ -r /sys/fs/cgroup/cpu.max ]; then
    read -r quota period < /sys/fs/cgroup/cpu.max
  elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] && [ -r /sys/fs/cgroup/cpu/cpu.cfs_period_us ]; then
    quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
    period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
  fi
  case "$quota" in
    "" | max | -*) ;;
    *) limit=$(( (quota + period - 1) / period )); [ "$limit" -lt "$n" ] && n=$limit ;;
  esac
  [ "$n" -ge 1 ] || n=1
  echo "$n"
}

if [ "$#" -eq 0 ] || [ "$1" = serve ]; then
  [ "$#" -eq 0 ] || shift
  available=$(cpus)
  workers=${EMBEDGATE_WORKERS:-$available}
  # Each worker's torch would otherwise start a thread per CPU: N workers, N x N threads.
  threads=$(( available / workers ))
  [ "$threads" -ge 1 ] || threads=1
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
  exec python -m proxy serve --host "${EMBEDGATE_HOST:-0.0.0.0}" --port "${EMBEDGATE_PORT:-8080}" \
    --workers "$workers" "$@"
fi
exec python -m proxy "$@"
