#!/system/bin/sh
# devprof on-device runner and memory sampler (pushed beside the runtime).
# usage: sampler.sh OUT INTERVAL_S CMD [ARGS...]
# Runs CMD with stdout/stderr to OUT.stdout/OUT.stderr, writes its pid to OUT.pid, and while it
# runs appends one line per INTERVAL_S to OUT.mem: "<uptime s> VmRSS:<kB> RssAnon:<kB> ...",
# read from /proc/PID/status with shell builtins only (no fork per sample), and "cpu:<ticks>", the
# runtime's user + system time from /proc/PID/stat. INTERVAL_S 0: no sampling. Exits with CMD's exit status.
out="$1"; interval="$2"; shift 2
read -r up0 _ < /proc/uptime
wall0=$(date +%s%N 2>/dev/null)
"$@" >"$out.stdout" 2>"$out.stderr" </dev/null &
pid=$!
echo "$pid" >"$out.pid"
echo "start $up0 $wall0 $pid" >"$out.mem"
last=""
if [ "$interval" != "0" ]; then
  while kill -0 "$pid" 2>/dev/null; do
    read -r up _ < /proc/uptime
    line=""
    while read -r k v _; do
      case "$k" in VmRSS:|RssAnon:|RssFile:|VmHWM:) line="$line $k$v" ;; esac
    done < "/proc/$pid/status"
    [ -z "$line" ] && break
    # the runtime's own CPU ticks (utime + stime, fields 14-15 of /proc/PID/stat; comm may hold spaces)
    if read -r st < "/proc/$pid/stat" 2>/dev/null; then
      set -- ${st##*) }
      [ $# -ge 13 ] && line="$line cpu:$(( ${12} + ${13} ))"
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
