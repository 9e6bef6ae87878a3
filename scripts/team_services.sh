#!/usr/bin/env bash
# The team services on one machine, bound to 127.0.0.1: PostgreSQL (MLflow's backend store), moto's
# S3 server (MLflow's artifact store and a DVC remote) and an MLflow tracking server using both.
# It is how the slow tests (tests/slow/) and a newcomer try the team setup without cloud accounts;
# a real deployment points the same commands at a managed Postgres and a real bucket (README, "Team
# setup").
#
#   scripts/team_services.sh start  [STATE_DIR]   start all three, write STATE_DIR/env, print it
#   scripts/team_services.sh stop   [STATE_DIR]   stop them; logs and database stay for inspection
#   scripts/team_services.sh purge  [STATE_DIR]   stop them and delete every file they wrote
#   scripts/team_services.sh status [STATE_DIR]   say which of them answers
#
# STATE_DIR defaults to ${TMPDIR:-/tmp}/mmaudio-team-$USER. After `start`, `. STATE_DIR/env` sets
# MLFLOW_TRACKING_URI (and the S3 endpoint and dummy credentials that moto accepts) in your shell.
#
# Needs: Debian's postgresql (`apt-get install -y postgresql`), and the project's venv with the
# `team` extra on PATH (mlflow, moto_server, boto3, psycopg:
# `pip install -c requirements.lock -c requirements-team.lock -e '.[team]'`). As root, PostgreSQL
# runs as the `postgres` user (initdb refuses root), with its data in a fresh /tmp/mmaudio-team-pg.*
# folder that user can reach.
#
# Environment: TEAM_PG_PORT, TEAM_S3_PORT, TEAM_MLFLOW_PORT (default: a free port each);
# PG_BIN (default: the newest /usr/lib/postgresql/*/bin); PYTHON (default: python on PATH).
set -euo pipefail

HOST=127.0.0.1
MLFLOW_BUCKET=mlflow-artifacts
DVC_BUCKET=dvc-remote
# moto accepts any credentials; these only keep boto3 from looking for real ones
AWS_KEY=testing
AWS_SECRET=testing
AWS_REGION=us-east-1
WAIT_S=120  # every wait below gives up after this many seconds

cmd=${1:-}
STATE=${2:-${TMPDIR:-/tmp}/mmaudio-team-${USER:-$(id -un)}}
PYTHON=${PYTHON:-python}

die() { echo "team_services: $*" >&2; exit 1; }

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Poll URL until it answers HTTP 200 or WAIT_S passes; the process PID must stay alive meanwhile.
wait_http() {
    local url=$1 pid=$2 log=$3
    "$PYTHON" - "$url" "$pid" "$WAIT_S" "$log" <<'EOF'
import os, sys, time, urllib.request
url, pid, limit, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"team_services: the server behind {url} exited; see {log}")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"team_services: {url} did not answer within {limit:.0f} s; see {log}")
EOF
}

pg_bin() {
    if [[ -n ${PG_BIN:-} ]]; then echo "$PG_BIN"; return; fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $d ]] || die "no PostgreSQL server found: apt-get install -y postgresql (or set PG_BIN)"
    echo "$d"
}

# Run a PostgreSQL server program as a user it accepts: `postgres` when we are root.
as_pg() {
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Start a long-running server in its own session so that `stop` can end it and its workers by id.
spawn() {
    local name=$1; shift
    setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
    echo $! >"$STATE/$name.pid"
}

# End the process group NAME.pid leads: SIGTERM, then SIGKILL after 15 s.
end_group() {
    local name=$1 pidfile="$STATE/$1.pid" pid i
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

start() {
    [[ ! -f $STATE/env ]] || die "$STATE/env exists: already started? ($0 purge $STATE first)"
    [[ ! -f $STATE/pgroot ]] || die "$STATE holds a stopped setup: $0 purge $STATE first"
    command -v mlflow >/dev/null || die "mlflow not on PATH: activate the project's venv"
    command -v moto_server >/dev/null || die "moto_server not on PATH: pip install -c requirements.lock -c requirements-team.lock -e '.[team]'"
    "$PYTHON" -c 'import boto3, psycopg' 2>/dev/null || die "$PYTHON lacks boto3/psycopg: pip install -c requirements.lock -c requirements-team.lock -e '.[team]'"
    local bin pg_port s3_port mlflow_port pgroot password pg_uri s3_url
    bin=$(pg_bin)
    mkdir -p "$STATE"
    # a start that fails half-way stops what it had started and deletes its files
    trap 'echo "team_services: start failed, cleaning up" >&2; purge' EXIT
    pg_port=${TEAM_PG_PORT:-$(free_port)}
    s3_port=${TEAM_S3_PORT:-$(free_port)}
    mlflow_port=${TEAM_MLFLOW_PORT:-$(free_port)}

    # PostgreSQL: a private cluster whose superuser `mlflow` logs in with a generated password.
    if [[ $(id -u) == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the postgres user (apt-get install -y postgresql)"
        pgroot=$(mktemp -d /tmp/mmaudio-team-pg.XXXXXX)
        chown postgres: "$pgroot"
    else
        pgroot=$STATE/pg
        mkdir -p "$pgroot"
    fi
    echo "$pgroot" >"$STATE/pgroot"
    password=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
    (umask 077; echo "$password" >"$pgroot/pwfile")
    [[ $(id -u) != 0 ]] || chown postgres: "$pgroot/pwfile"
    as_pg "$bin/initdb" -D "$pgroot/data" -U mlflow --pwfile="$pgroot/pwfile" -E UTF8 --no-locale \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 >"$STATE/initdb.log" 2>&1 \
        || die "initdb failed; see $STATE/initdb.log"
    rm -f "$pgroot/pwfile"
    # The password lives in a libpq password file only: never on a command line (`ps` shows every
    # process's arguments to every user) nor in the URI handed to `mlflow server`. Clients name the
    # file with PGPASSFILE or the URI's `passfile` parameter.
    (umask 077; echo "$HOST:$pg_port:*:mlflow:$password" >"$STATE/pgpass")
    unset password
    as_pg "$bin/pg_ctl" -D "$pgroot/data" -l "$pgroot/postgres.log" -w -t "$WAIT_S" \
        -o "-c listen_addresses=$HOST -p $pg_port -c unix_socket_directories=$pgroot" start >/dev/null \
        || die "PostgreSQL did not start; see $pgroot/postgres.log"
    PGPASSFILE=$STATE/pgpass "$bin/createdb" -h "$HOST" -p "$pg_port" -U mlflow mlflow
    pg_uri="postgresql://mlflow@$HOST:$pg_port/mlflow?passfile=$STATE/pgpass"

    # S3: moto's server, with one bucket for MLflow's artifacts and one for DVC.
    s3_url="http://$HOST:$s3_port"
    spawn moto moto_server -H "$HOST" -p "$s3_port"
    wait_http "$s3_url/moto-api/" "$(cat "$STATE/moto.pid")" "$STATE/moto.log"
    AWS_ACCESS_KEY_ID=$AWS_KEY AWS_SECRET_ACCESS_KEY=$AWS_SECRET "$PYTHON" - "$s3_url" "$AWS_REGION" "$MLFLOW_BUCKET" "$DVC_BUCKET" <<'EOF'
import sys, boto3
url, region, *buckets = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=url, region_name=region)
for b in buckets:
    s3.create_bucket(Bucket=b)
EOF

    # MLflow: runs in Postgres; artifacts proxied by the server into the bucket, so clients need
    # no S3 credentials (they upload to mlflow-artifacts:/ through the server).
    MLFLOW_S3_ENDPOINT_URL=$s3_url AWS_ACCESS_KEY_ID=$AWS_KEY AWS_SECRET_ACCESS_KEY=$AWS_SECRET \
        AWS_DEFAULT_REGION=$AWS_REGION \
        spawn mlflow mlflow server --backend-store-uri "$pg_uri" --artifacts-destination "s3://$MLFLOW_BUCKET/" \
        --host "$HOST" --port "$mlflow_port" --workers 1
    wait_http "http://$HOST:$mlflow_port/health" "$(cat "$STATE/mlflow.pid")" "$STATE/mlflow.log"

    cat >"$STATE/env" <<EOF
export MLFLOW_TRACKING_URI=http://$HOST:$mlflow_port
export MLFLOW_S3_ENDPOINT_URL=$s3_url
export AWS_ACCESS_KEY_ID=$AWS_KEY
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET
export AWS_DEFAULT_REGION=$AWS_REGION
export TEAM_PG_URI=$pg_uri
export PGPASSFILE=$STATE/pgpass
export TEAM_S3_ENDPOINT=$s3_url
export TEAM_MLFLOW_BUCKET=$MLFLOW_BUCKET
export TEAM_DVC_BUCKET=$DVC_BUCKET
export TEAM_STATE_DIR=$STATE
EOF
    chmod 600 "$STATE/env"
    trap - EXIT
    cat "$STATE/env"
}

stop() {
    end_group mlflow
    end_group moto
    if [[ -f $STATE/pgroot && -f $(cat "$STATE/pgroot")/data/postmaster.pid ]]; then
        as_pg "$(pg_bin)/pg_ctl" -D "$(cat "$STATE/pgroot")/data" -m fast -w -t "$WAIT_S" stop >/dev/null
    fi
    rm -f "$STATE/env"
}

purge() {
    stop
    if [[ -f $STATE/pgroot ]]; then rm -rf -- "$(cat "$STATE/pgroot")"; fi
    rm -rf -- "$STATE"
}

status() {
    [[ -f $STATE/env ]] || { echo "not started ($STATE/env missing)"; return 1; }
    # shellcheck disable=SC1091
    . "$STATE/env"
    local ok=0
    "$PYTHON" -c "import os, psycopg; psycopg.connect(os.environ['TEAM_PG_URI']).close()" && echo "postgres: up" || { echo "postgres: down"; ok=1; }
    "$PYTHON" -c "import urllib.request; urllib.request.urlopen('$TEAM_S3_ENDPOINT/moto-api/', timeout=5)" && echo "s3 (moto): up at $TEAM_S3_ENDPOINT" || { echo "s3: down"; ok=1; }
    "$PYTHON" -c "import urllib.request; urllib.request.urlopen('$MLFLOW_TRACKING_URI/health', timeout=5)" && echo "mlflow: up at $MLFLOW_TRACKING_URI" || { echo "mlflow: down"; ok=1; }
    return $ok
}

case $cmd in
    start) start ;;
    stop) stop ;;
    purge) purge ;;
    status) status ;;
    *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
