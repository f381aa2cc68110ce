# Shared by scripts/bench and scripts/bench-peers: pinning, Redis, servers,
# and the tidings-bench runs. Sourced, not run.
step() { printf '\n==> %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

cores=$(nproc)
if have taskset && [ "$cores" -ge 2 ]; then
  server_core=(taskset -c 0); load_core=(taskset -c 1)
else
  server_core=(); load_core=()
  echo "scripts/bench: taskset or a second core is missing: server and load share the machine" >&2
fi
# Many connections need many descriptors, on both sides.
if ! ulimit -n 1048576 2>/dev/null && ! ulimit -n 262144 2>/dev/null; then
  echo "scripts/bench: cannot raise the open-file limit above $(ulimit -n); large connection counts will fail" >&2
fi

step "building (release)"
cargo build --release --locked -q -p tidings-gateway -p tidings-bench
bin="$CARGO_TARGET_DIR/release"
bench() { "${load_core[@]}" "$bin/tidings-bench" "$@" | tee -a "$results"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

redis_port=$(free_port)
"${load_core[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --loglevel warning >"$out/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port"
export TIDINGS_JWT_SECRET=bench-secret

# start_server NAME CMD... : runs CMD pinned to the server core; sets $server_pid and $server_url.
start_server() {
  local name=$1; shift
  local port; port=$(free_port)
  PORT=$port LISTEN="127.0.0.1:$port" "${server_core[@]}" env TIDINGS_LISTEN="127.0.0.1:$port" "$@" >"$out/$name.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid")
  server_url="ws://127.0.0.1:$port"
  wait_port "$port"
}
stop_server() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }

start_tidings() {
  start_server tidings env TIDINGS_REDIS_URL="redis://127.0.0.1:$redis_port" TIDINGS_MAX_CONNECTIONS=1000000 \
    TIDINGS_LOG_FORMAT=text RUST_LOG=warn "$bin/tidings-gateway"
}
start_ceiling() { # $1: --coalesce or nothing
  local port; port=$(free_port)
  "${server_core[@]}" "$bin/tidings-bench" ceiling --listen "127.0.0.1:$port" --redis "127.0.0.1:$redis_port" ${1:+"$1"} >"$out/ceiling.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid"); server_url="ws://127.0.0.1:$port"; wait_port "$port"
}

# Each side needs a descriptor per connection: stay under this shell's limit.
fd_limit=$(ulimit -n)
max_conns=$(( fd_limit - 500 ))
cap() { if [ "$1" -gt "$max_conns" ]; then echo "scripts/bench: $1 connections need more than the open-file limit ($fd_limit) allows; using $max_conns" >&2; echo "$max_conns"; else echo "$1"; fi; }

