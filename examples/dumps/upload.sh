#!/bin/sh
# Fake the transfer to the new server: a copy into work/remote/ that takes a
# moment (this is the step that saturates the network: max-running 3).
set -eu
db=${1:?usage: upload.sh DATABASE}
mkdir -p work/remote
sleep "${DUMPS_SLEEP:-0.2}"
cp "work/dumps/$db.sql.gz" "work/remote/$db.sql.gz.part"
mv "work/remote/$db.sql.gz.part" "work/remote/$db.sql.gz"
echo "uploaded $db"
