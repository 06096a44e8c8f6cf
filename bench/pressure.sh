#!/usr/bin/env bash
# The machine's pressure, once a second, for as long as process PID lives (a bench):
# CPU "some", IO and memory "full" (/proc/pressure: the share of time every task was
# stalled on it), the number of processes, and a vmstat line. How the stalls at
# 10,000 databases were found (docs/density.md): memory "full" at 75% with the CPUs
# in the kernel.
#
#   .venv/bin/python bench/density.py ... & bench/pressure.sh $! > var/pressure.log
set -euo pipefail
pid=${1:?usage: bench/pressure.sh PID}
while kill -0 "$pid" 2>/dev/null; do
    cpu=$(awk '/some/ {print $2}' /proc/pressure/cpu)
    io=$(awk '/full/ {print $2}' /proc/pressure/io)
    memory=$(awk '/full/ {print $2}' /proc/pressure/memory)
    # (A process that exits mid-listing is not an error.)
    processes=$( (find /proc -maxdepth 1 -name '[0-9]*' 2>/dev/null || true) | wc -l)
    echo "$(date +%T) cpu:$cpu io_full:$io mem_full:$memory procs:$processes | $(vmstat 1 2 | tail -1)"
done
