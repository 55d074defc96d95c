#!/system/bin/sh
# devprof battery sampler (pushed beside sampler.sh, started in its own adb shell alongside a run).
# usage: power_sampler.sh OUT INTERVAL_S STOPFILE MAX_S MODE BATTERY_DIR
#   MODE sysfs:   reads BATTERY_DIR/current_now and voltage_now with shell builtins (no fork per sample)
#   MODE dumpsys: runs `dumpsys battery` each sample ("current now:" where the vendor prints it, "voltage:")
#   MODE sysfs-counter: reads BATTERY_DIR/charge_counter (µAh) and voltage_now: the current column is the counter
#   MODE dumpsys-counter: `dumpsys battery` each sample ("Charge counter:" in µAh, "voltage:")
# Writes "start <uptime s> <wall ns>", then one "<uptime s> <current|counter> <voltage>" line per INTERVAL_S
# until STOPFILE exists (or MAX_S seconds passed), then "status <first> <last>" (the battery's status
# at start and end: sysfs words or dumpsys codes) and "end <uptime s>".
out="$1"; interval="$2"; stop="$3"; max="$4"; mode="$5"; bat="$6"
read -r up0 _ < /proc/uptime
wall0=$(date +%s%N 2>/dev/null)
echo "start $up0 $wall0" >"$out"
status_now() {
  if [ "$mode" = "sysfs" ] || [ "$mode" = "sysfs-counter" ]; then
    s=""; read -r s < "$bat/status" 2>/dev/null; echo "${s:-?}" | tr -d ' '
  else
    dumpsys battery 2>/dev/null | while IFS=: read -r k v; do
      k="${k#"${k%%[! ]*}"}"; [ "$k" = "status" ] && echo $v
    done
  fi
}
s0=$(status_now)
up="$up0"
while [ ! -e "$stop" ]; do
  read -r up _ < /proc/uptime
  if [ $(( ${up%.*} - ${up0%.*} )) -ge "$max" ]; then break; fi
  if [ "$mode" = "sysfs" ] || [ "$mode" = "sysfs-counter" ]; then
    c=""; v=""
    if [ "$mode" = "sysfs" ]; then read -r c < "$bat/current_now" 2>/dev/null
    else read -r c < "$bat/charge_counter" 2>/dev/null; fi
    read -r v < "$bat/voltage_now" 2>/dev/null
    echo "$up ${c:-?} ${v:-?}" >>"$out"
  else
    dumpsys battery 2>/dev/null | {
      c="?"; v="?"
      while IFS=: read -r k val; do
        k="${k#"${k%%[! ]*}"}"
        case "$mode:$k" in
          "dumpsys:current now"|"dumpsys-counter:Charge counter") c=$(echo $val) ;;
          *:voltage) v=$(echo $val) ;;
        esac
      done
      echo "$up $c $v"
    } >>"$out"
  fi
  sleep "$interval"
done
echo "status ${s0:-?} $(status_now)" >>"$out"
read -r up _ < /proc/uptime
echo "end $up" >>"$out"
