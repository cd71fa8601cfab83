# Shared by the azd hooks (sourced, not run): logging, the azd environment, required values.
# The sourcing hook sets HOOK (its name) first.

log() { printf '%s: %s\n' "$HOOK" "$*"; }
fail() {
  printf '%s: %s\n' "$HOOK" "$*" >&2
  exit 1
}

# Fill unset variables from `azd env get-values` (KEY="value" lines); values azd already passed win.
load_azd_env() {
  local key value
  command -v azd >/dev/null 2>&1 || return 0
  while IFS='=' read -r key value; do
    [[ "$key" =~ ^[A-Z][A-Z0-9_]*$ ]] || continue
    value="${value#\"}"
    value="${value%\"}"
    if [[ -z "${!key:-}" ]]; then
      export "$key=$value"
    fi
  done < <(azd env get-values 2>/dev/null || true)
}

# Fail with one message naming every listed variable that is empty.
require_values() {
  local name missing=()
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || missing+=("$name")
  done
  if ((${#missing[@]})); then
    fail "missing azd environment values: ${missing[*]} (run 'azd provision' first, or select the environment with 'azd env select')"
  fi
}
