#!/bin/sh
# Compress a dump: work/dumps/DB.sql -> work/dumps/DB.sql.gz.
set -eu
db=${1:?usage: compress.sh DATABASE}
. ./pace.sh
pace "$(wc -l < "work/dumps/$db.sql")" 0.5
gzip -c "work/dumps/$db.sql" > "work/dumps/$db.sql.gz.part"
mv "work/dumps/$db.sql.gz.part" "work/dumps/$db.sql.gz"
echo "compressed $db: $(wc -c < "work/dumps/$db.sql.gz") bytes"
