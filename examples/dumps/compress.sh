#!/bin/sh
# Compress a dump: work/dumps/DB.sql -> work/dumps/DB.sql.gz.
set -eu
db=${1:?usage: compress.sh DATABASE}
sleep "${DUMPS_SLEEP:-0.2}"
gzip -c "work/dumps/$db.sql" > "work/dumps/$db.sql.gz.part"
mv "work/dumps/$db.sql.gz.part" "work/dumps/$db.sql.gz"
echo "compressed $db: $(wc -c < "work/dumps/$db.sql.gz") bytes"
