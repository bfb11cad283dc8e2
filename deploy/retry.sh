# shellcheck shell=bash
# retry CMD...: run a command up to 3 times, 10 s then 20 s apart. For installs and downloads only: a wheel cut
# off mid-download is a network fault, not a failed install. Sourced by .ci/run and the deploy/ scripts.
retry() {
  local attempt
  for attempt in 1 2 3; do
    "$@" && return 0
    echo "failed (attempt $attempt of 3): $*" >&2
    [ "$attempt" -lt 3 ] && sleep $((attempt * 10))
  done
  return 1
}
