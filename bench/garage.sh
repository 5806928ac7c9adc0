# Sourced by the S3 benchmarks: start_garage DIR starts a one-node Garage keeping its data under
# DIR, with bucket `bench` and a key for it in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; sets
# garage_pid and the command array gc (`"${gc[@]}" status`). S3 on 127.0.0.1:3930 (region
# garage), metrics on :3933. garage_requests counts the S3 requests served so far,
# garage_cpu the server's CPU seconds.
start_garage() {
  local g=$1
  mkdir -p "$g/meta" "$g/data"
  cat >"$g/garage.toml" <<TOML
metadata_dir = "$g/meta"
data_dir = "$g/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3931"
rpc_public_addr = "127.0.0.1:3931"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3930"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:3933"
TOML
  gc=(garage -c "$g/garage.toml")
  "${gc[@]}" server >"$g/server.log" 2>&1 &
  garage_pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/3930) 2>/dev/null && break; sleep 0.1; done
  for _ in $(seq 1 50); do "${gc[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
  local node info
  node=$("${gc[@]}" node id -q 2>/dev/null | cut -d@ -f1)
  "${gc[@]}" layout assign -z dc1 -c 100G "$node" >/dev/null 2>&1
  "${gc[@]}" layout apply --version 1 >/dev/null 2>&1
  "${gc[@]}" bucket create bench >/dev/null 2>&1
  "${gc[@]}" key create bench-key >/dev/null 2>&1
  "${gc[@]}" bucket allow --read --write --owner bench --key bench-key >/dev/null 2>&1
  info=$("${gc[@]}" key info bench-key --show-secret 2>/dev/null)
  AWS_ACCESS_KEY_ID=$(awk '/Key ID:/ {print $3}' <<<"$info")
  AWS_SECRET_ACCESS_KEY=$(awk '/Secret key:/ {print $3}' <<<"$info")
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=garage
}

garage_requests() { curl -s http://127.0.0.1:3933/metrics | awk '/^api_s3_request_counter/ {n += $NF} END {print n + 0}'; }
garage_cpu() { awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$garage_pid/stat"; }
