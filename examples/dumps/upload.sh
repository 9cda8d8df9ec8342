#!/bin/sh
# Fake the upload of a compressed dump to where the team fetches it: a copy
# into work/remote/ that takes a moment.
set -eu
db=${1:?usage: upload.sh DATABASE}
. ./pace.sh
mkdir -p work/remote
pace "$(wc -l < "work/dumps/$db.sql")" 0.5
cp "work/dumps/$db.sql.gz" "work/remote/$db.sql.gz.part"
mv "work/remote/$db.sql.gz.part" "work/remote/$db.sql.gz"
echo "uploaded $db"
