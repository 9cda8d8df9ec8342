#!/bin/sh
# The final report: every database restored and identical to its dump.
# Fails (and says which) if one is missing or differs.
set -u
status=0
for db in "$@"; do
    if cmp -s "work/dumps/$db.sql" "work/restored/$db.sql"; then
        echo "$db: restored, $(wc -l < "work/restored/$db.sql") rows" >> work/report.txt
    else
        echo "$db: NOT restored" >> work/report.txt
        status=1
    fi
done
cat work/report.txt
exit $status
