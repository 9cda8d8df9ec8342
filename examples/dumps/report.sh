#!/bin/sh
# The final report: every database restored and uploaded, each identical to
# its dump.  Fails (and says which) if one is missing or differs.
set -u
status=0
: > work/report.txt
for db in "$@"; do
    if ! cmp -s "work/dumps/$db.sql" "work/restored/$db.sql"; then
        echo "$db: NOT restored" >> work/report.txt
        status=1
    elif ! gunzip -c "work/remote/$db.sql.gz" 2>/dev/null | cmp -s - "work/dumps/$db.sql"; then
        echo "$db: NOT uploaded" >> work/report.txt
        status=1
    else
        echo "$db: restored and uploaded, $(wc -l < "work/restored/$db.sql") rows" >> work/report.txt
    fi
done
cat work/report.txt
exit $status
