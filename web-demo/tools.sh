#!/usr/bin/env bash
# The tools the browser demo needs beyond cargo, and the commands that install them on Debian 12
# (as root):
#   wasm32 target        rustup target add wasm32-unknown-unknown                  (build.sh)
#   wasm-bindgen CLI     cargo install wasm-bindgen-cli --version <Cargo.lock's> --locked  (build.sh)
#   Chromium             apt-get install chromium                                  (the test)
#   Node.js >= 18, npm   apt-get install nodejs npm                                (the test)
#
#   tools.sh            prints each missing tool with its install command; exit 1 if any
#   tools.sh --build    the same for build.sh's two only
#   tools.sh --install  installs whatever is missing (.ci/run does this)
#   tools.sh --wasm-bindgen-version   prints the pinned wasm-bindgen version
set -euo pipefail
cd "$(dirname "$0")"

wasm_bindgen=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
mode=${1:-check}
if [[ "$mode" == --wasm-bindgen-version ]]; then
  echo "$wasm_bindgen"
  exit 0
fi

missing=()    # "what|install command"
if [[ ! -d "$(rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown" ]]; then
  missing+=("the wasm32-unknown-unknown Rust target|rustup target add wasm32-unknown-unknown")
fi
if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $wasm_bindgen" ]]; then
  missing+=("wasm-bindgen-cli $wasm_bindgen (have: $(wasm-bindgen --version 2>/dev/null || echo none))|cargo install wasm-bindgen-cli --version $wasm_bindgen --locked --force")
fi
if [[ "$mode" != --build ]]; then
  if [[ ! -x /usr/bin/chromium ]]; then
    missing+=("Chromium (/usr/bin/chromium)|apt-get install -y chromium")
  fi
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if (( node_major < 18 )); then
    missing+=("Node.js >= 18 (have: $(node --version 2>/dev/null || echo none))|apt-get install -y nodejs")
  fi
  if ! command -v npm >/dev/null; then
    missing+=("npm|apt-get install -y npm")
  fi
fi

if [[ "$mode" == --install ]]; then
  updated=0
  for entry in "${missing[@]}"; do
    command=${entry#*|}
    echo "tools.sh: installing ${entry%%|*}: $command" >&2
    if [[ "$command" == apt-get* ]]; then
      if (( !updated )); then
        apt-get update -qq
        updated=1
      fi
      DEBIAN_FRONTEND=noninteractive $command -qq >/dev/null
    elif ! $command; then
      # A registry that lacks one of the crates the tool's own Cargo.lock pins (webpki-roots
      # 1.0.11 on 2026-11-29) fails the --locked install: take the newest compatible
      # versions it has instead.
      [[ "$command" == *" --locked"* ]] || exit 1
      echo "tools.sh: retrying without --locked: ${command/ --locked/}" >&2
      ${command/ --locked/}
    fi
  done
  exec ./tools.sh
fi

for entry in "${missing[@]}"; do
  echo "missing: ${entry%%|*}; install with: ${entry#*|}" >&2
done
(( ${#missing[@]} == 0 ))
