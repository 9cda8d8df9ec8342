#!/bin/sh
# Sourced by the steps: `pace ROWS FACTOR` sleeps as long as a step on a
# database of ROWS rows would take, scaled down to a demo: DUMPS_SLEEP
# seconds (default 0.1) per 1,000 rows, times FACTOR.
pace() {
    sleep "$(awk -v rows="$1" -v factor="$2" -v unit="${DUMPS_SLEEP:-0.1}" \
        'BEGIN { printf "%.3f", rows / 1000 * unit * factor }')"
}
