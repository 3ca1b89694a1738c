#!/usr/bin/env bash
# Run a staged posttrain config: each top-level key of the YAML file is a recipe name (sample,
# judge, rm, ppo, dpo, ...) and its value that recipe's config; stages run in file order.
#
#   examples/rlaif.sh examples/rlaif_dpo.yaml              # every stage
#   examples/rlaif.sh examples/rlaif_rm_ppo.yaml rm ppo    # only these stages
#
# Extra settings for every stage can follow `--`:  examples/rlaif.sh FILE -- --overwrite
set -euo pipefail
config=$1; shift
stages=(); extra=()
while (($#)); do
  if [[ $1 == -- ]]; then shift; extra=("$@"); break; fi
  stages+=("$1"); shift
done
posttrain=${POSTTRAIN:-posttrain}
python=${PYTHON:-python}
if ((${#stages[@]} == 0)); then
  mapfile -t stages < <("$python" -c 'import sys, yaml; print("\n".join(yaml.safe_load(open(sys.argv[1]))))' "$config")
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for stage in "${stages[@]}"; do
  "$python" - "$config" "$stage" "$tmp/$stage.yaml" <<'PY'
import sys, yaml
stages = yaml.safe_load(open(sys.argv[1]))
if sys.argv[2] not in stages:
    sys.exit(f"error: {sys.argv[1]}: no stage {sys.argv[2]!r} (stages: {', '.join(stages)})")
yaml.safe_dump(stages[sys.argv[2]], open(sys.argv[3], "w"), sort_keys=False)
PY
  echo "== posttrain $stage --config $config[$stage] ${extra[*]:-}" >&2
  "$posttrain" "$stage" --config "$tmp/$stage.yaml" ${extra[@]+"${extra[@]}"}
done
