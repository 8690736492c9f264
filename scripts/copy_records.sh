#!/usr/bin/env bash
# Copies a run's records (config.json, metrics.jsonl, pictures/) from its
# workdir into docs/runs/<set>/<name>/, leaving checkpoints and TensorBoard
# events behind: a committed record of a run that may still be going.
#
#   bash scripts/copy_records.sh WORKDIR docs/runs/<set>/<name>
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: copy_records.sh WORKDIR DEST" >&2; exit 2; }
src=$1 dest=$2
for f in config.json metrics.jsonl; do
  [ -f "$src/$f" ] || { echo "$src/$f not found: is $src a run's workdir?" >&2; exit 3; }
done
mkdir -p "$dest"
cp "$src/config.json" "$src/metrics.jsonl" "$dest/"
if [ -d "$src/pictures" ]; then
  mkdir -p "$dest/pictures" && cp -r "$src/pictures/." "$dest/pictures/"
fi
echo "$dest: $(grep -c '"test_' "$dest/metrics.jsonl") evaluation records"
