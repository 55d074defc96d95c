#!/system/bin/sh
# devprof on-device runner and memory sampler (pushed beside the runtime).
# usage: sampler.sh OUT INTERVAL_S CMD [ARGS...]
# Runs CMD with stdout/stderr to OUT.stdout/OUT.stderr, writes its pid to OUT.pid, and while it
# runs appends one line per INTERVAL_S to OUT.mem: "<uptime s> VmRSS:<kB> RssAnon:<kB> ...",
# read from /proc/PID/status with shell builtins only (no fork per sample), "cpu:<ticks>", the
# runtime's user + system time, "minflt:<n> majflt:<n>" from /proc/PID/stat, and "read_bytes:<n>"
# from /proc/PID/io (bytes read from storage so far; absent when unreadable). Every 100 ms at
# most, and never sooner than 50 times its own cost after the last one (smaps_rollup walks the
# process's page tables: tens of ms for a GB-sized process), a sample also carries Pss, Pss_Anon,
# Pss_File, Swap, SwapPss from /proc/PID/smaps_rollup and MemAvailable, SwapFree from /proc/meminfo
# (devprof.memory). The first line after "start" is "meminfo MemTotal:<kB> ..." read before CMD.
# INTERVAL_S 0: no sampling. Exits with CMD's exit status.
out="$1"; interval="$2"; shift 2
read -r up0 _ < /proc/uptime
mi=""
while read -r k v _; do
  case "$k" in MemTotal:|MemAvailable:|SwapTotal:|SwapFree:) mi="$mi $k$v" ;; esac
done < /proc/meminfo
wall0=$(date +%s%N 2>/dev/null)
"$@" >"$out.stdout" 2>"$out.stderr" </dev/null &
pid=$!
echo "$pid" >"$out.pid"
echo "start $up0 $wall0 $pid" >"$out.mem"
echo "meminfo$mi" >>"$out.mem"
last=""
smaps_next=0
if [ "$interval" != "0" ]; then
  while kill -0 "$pid" 2>/dev/null; do
    read -r up _ < /proc/uptime
    line=""
    while read -r k v _; do
      case "$k" in VmRSS:|RssAnon:|RssFile:|VmHWM:|RssShmem:|VmSwap:) line="$line $k$v" ;; esac
    done < "/proc/$pid/status"
    [ -z "$line" ] && break
    # the runtime's own CPU ticks (utime + stime, fields 14-15 of /proc/PID/stat; comm may hold spaces)
    if read -r st < "/proc/$pid/stat" 2>/dev/null; then
      set -- ${st##*) }
      [ $# -ge 13 ] && line="$line cpu:$(( ${12} + ${13} )) minflt:$8 majflt:${10}"
    else
      break  # the runtime exited (and was reaped) between the two reads: no partial sample
    fi
    # storage reads (page faults miss what readahead and MAP_POPULATE read in); kept as text: mksh's
    # arithmetic is 32-bit
    if [ -r "/proc/$pid/io" ]; then
      while read -r k v _; do
        case "$k" in read_bytes:) line="$line read_bytes:$v" ;; esac
      done 2>/dev/null < "/proc/$pid/io"
    fi
    # uptime in centiseconds ("1${frac}" - 100 keeps a fraction like 07 from reading as octal)
    now=$(( ${up%.*} * 100 + 1${up#*.} - 100 ))
    if [ "$now" -ge "$smaps_next" ] && [ -r "/proc/$pid/smaps_rollup" ]; then
      while read -r k v _; do
        case "$k" in Pss:|Pss_Anon:|Pss_File:|Swap:|SwapPss:) line="$line $k$v" ;; esac
      done < "/proc/$pid/smaps_rollup"
      while read -r k v _; do
        case "$k" in MemAvailable:|SwapFree:) line="$line $k$v" ;; esac
      done < /proc/meminfo
      read -r up1 _ < /proc/uptime
      t1=$(( ${up1%.*} * 100 + 1${up1#*.} - 100 ))
      gap=$(( (t1 - now) * 50 ))
      [ "$gap" -lt 10 ] && gap=10
      smaps_next=$(( t1 + gap ))
    fi
    echo "$up$line" >>"$out.mem"
    last="$line"
    sleep "$interval"
  done
fi
wait "$pid"
rc=$?
read -r up _ < /proc/uptime
echo "end $up $rc" >>"$out.mem"
exit $rc
