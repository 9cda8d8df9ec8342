#!/bin/sh
# Fake `psql DB < dump` on the new server: unpack into work/restored/.
set -eu
db=${1:?usage: restore.sh DATABASE}
mkdir -p work/restored
sleep "${DUMPS_SLEEP:-0.2}"
gunzip -c "work/remote/$db.sql.gz" > "work/restored/$db.sql"
echo "restored $db"
