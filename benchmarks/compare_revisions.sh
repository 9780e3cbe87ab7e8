#!/usr/bin/env bash
# Run the benchmarks on an older revision and on this checkout, back to back on the same machine, and
# print one JSON line per (benchmark, side): the way to show a refactor left the numbers alone.
#   bash benchmarks/compare_revisions.sh 2977675 [talk render ...]
# The older revision is checked out into a temporary git worktree (removed afterwards).
set -u
rev=${1:?usage: compare_revisions.sh REVISION [BENCHMARK ...]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(talk talk_lipsync render avatar3d lipsync track guide head_model batch)
old=$(mktemp -d)
git -C "$here" worktree add -q --detach "$old" "$rev" || exit 2
trap 'git -C "$here" worktree remove --force "$old"' EXIT
for name in "${names[@]}"; do
  args=()
  case $name in
    render) args=(--counts 100000 --sizes 512) ;;
    batch) args=(--items 4) ;;
  esac
  for side in old new; do
    dir=$([ "$side" = old ] && echo "$old" || echo "$here")
    [ -f "$dir/benchmarks/$name.py" ] || { echo "{\"bench\": \"$name\", \"side\": \"$side\", \"missing\": true}"; continue; }
    line=$(cd "$dir" && PYTHONPATH=. python "benchmarks/$name.py" "${args[@]}" 2>/dev/null | tail -1)
    echo "{\"bench\": \"$name\", \"side\": \"$side\", \"rev\": \"$([ "$side" = old ] && echo "$rev" || git -C "$here" rev-parse --short HEAD)\", \"out\": ${line:-null}}"
  done
done
