#!/bin/sh
# Fake `pg_dump DB > work/dumps/DB.sql`: a short pause, a small file.
set -eu
db=${1:?usage: dump.sh DATABASE}
mkdir -p work/dumps
sleep "${DUMPS_SLEEP:-0.2}"
seq 1 2000 | sed "s/^/INSERT INTO $db VALUES (/; s/\$/);/" > "work/dumps/$db.sql.part"
mv "work/dumps/$db.sql.part" "work/dumps/$db.sql"
echo "dumped $db: $(wc -l < "work/dumps/$db.sql") rows"
