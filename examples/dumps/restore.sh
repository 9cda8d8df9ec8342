#!/bin/sh
# Fake `psql DB < work/dumps/DB.sql` on the new server: a copy into
# work/restored/.  It needs only the dump, so it runs beside compress/upload.
set -eu
db=${1:?usage: restore.sh DATABASE}
. ./pace.sh
mkdir -p work/restored
pace "$(wc -l < "work/dumps/$db.sql")" 0.5
cp "work/dumps/$db.sql" "work/restored/$db.sql.part"
mv "work/restored/$db.sql.part" "work/restored/$db.sql"
echo "restored $db"
