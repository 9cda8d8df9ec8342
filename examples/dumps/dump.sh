#!/bin/sh
# Fake `pg_dump DB > work/dumps/DB.sql`: as slow as the database is big.
set -eu
db=${1:?usage: dump.sh DATABASE ROWS}
rows=${2:?usage: dump.sh DATABASE ROWS}
. ./pace.sh
mkdir -p work/dumps
pace "$rows" 1
seq 1 "$rows" | sed "s/^/INSERT INTO $db VALUES (/; s/\$/);/" > "work/dumps/$db.sql.part"
mv "work/dumps/$db.sql.part" "work/dumps/$db.sql"
echo "dumped $db: $rows rows"
