#!/usr/bin/env bash
# A real Kubernetes control plane (etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager; Kubernetes 1.20 built from Debian's source) on
# loopback for drover's tests. There is no kubelet: one Node object is
# registered as Ready so that the scheduler binds pods to it; nothing runs
# them, so a test plays the node by patching pod status (/status subresource).
#
#   scripts/services/kube.sh start|stop|status
#
# start: installs etcd-server/openssl/curl if missing. Builds kube-apiserver,
#   kube-scheduler and kube-controller-manager once per machine from
#   `apt-get source kubernetes` (enables deb-src if needed; 5-7 min on 2
#   cores, run under `nice`; log in the cache dir) and caches them in
#   $DROVER_KUBE_CACHE/<debian version>/bin (default /var/cache/drover/kubernetes).
#   Generates a CA, a serving certificate for 127.0.0.1, a service-account key
#   pair and a random bearer token (user `drover`, group system:masters) once,
#   then starts etcd (127.0.0.1:$DROVER_KUBE_ETCD_PORT, default 12379, peer port
#   +1), the API server (https://127.0.0.1:$DROVER_KUBE_PORT, default 6443), the
#   scheduler and the controller manager (health on 127.0.0.1:
#   $DROVER_KUBE_SCHEDULER_PORT, default 10259, and
#   $DROVER_KUBE_CONTROLLER_MANAGER_PORT, default 10257), waits for /readyz,
#   registers the Ready node `drover-node` (16 CPUs, 64Gi, 250 pods, no taints),
#   and when it started anything checks that a pod gets bound to it.
#   Writes $STATE/kubeconfig (server, CA data, token; namespace default; root
#   only) and $STATE/token, where STATE is $DROVER_SERVICES_DIR/kube (default
#   /tmp/drover-services/kube). Data (etcd), certificates and token survive
#   stop/start; remove $STATE for a blank cluster.
#   A second start while everything is up only re-checks and says so.
# stop: stops the four daemons by their pid files (SIGTERM, then SIGKILL).
# status: each daemon's pid and health; exit 0 if all four are healthy.
#
# Pitfalls a test should know: deleting a bound pod gracefully leaves it
# Terminating forever (no kubelet confirms it): delete with gracePeriodSeconds=0,
# or after patching it to a terminal phase (Succeeded/Failed), which deletes at
# once. Pods need no ServiceAccount (that admission plugin is off).
set -euo pipefail

SERVICE_NAME=kube
# shellcheck source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

PORT="${DROVER_KUBE_PORT:-6443}"
ETCD_PORT="${DROVER_KUBE_ETCD_PORT:-12379}"
ETCD_PEER_PORT=$((ETCD_PORT + 1))
SCHED_PORT="${DROVER_KUBE_SCHEDULER_PORT:-10259}"
CM_PORT="${DROVER_KUBE_CONTROLLER_MANAGER_PORT:-10257}"
CACHE="${DROVER_KUBE_CACHE:-/var/cache/drover/kubernetes}"
NODE=drover-node
# What the node offers the scheduler (fixed, so that tests can rely on a pod
# that asks for more staying Pending).
NODE_CPU=16
NODE_MEMORY=64Gi
NODE_PODS=250
START_TIMEOUT=60

STATE="$SERVICES_DIR/kube"
PKI="$STATE/pki"
CA="$PKI/ca.crt"
TOKEN_FILE="$STATE/token"
TOKENS_CSV="$STATE/tokens.csv"
KUBECONFIG_FILE="$STATE/kubeconfig"
ETCD_DATA="$STATE/etcd"
ETCD_PID="$STATE/etcd.pid"
APISERVER_PID="$STATE/kube-apiserver.pid"
SCHED_PID="$STATE/kube-scheduler.pid"
CM_PID="$STATE/kube-controller-manager.pid"
ETCD_LOG="$STATE/etcd.log"
APISERVER_LOG="$STATE/kube-apiserver.log"
SCHED_LOG="$STATE/kube-scheduler.log"
CM_LOG="$STATE/kube-controller-manager.log"
# /proc/PID/comm holds at most 15 characters.
CM_COMM=kube-controller

BINARIES=(kube-apiserver kube-scheduler kube-controller-manager)

show_logs() {
    local f
    for f in "$@"; do
        [ -f "$f" ] || continue
        echo "---- $f (last 30 lines) ----" >&2
        tail -n 30 "$f" >&2 || true
    done
}

# fail MESSAGE: print the daemons' log tails and die.
fail() {
    show_logs "$ETCD_LOG" "$APISERVER_LOG" "$SCHED_LOG" "$CM_LOG"
    die "$*"
}

# ------------------------------------------------------------- binaries ----

# Directory of the newest complete cached build, if any.
cached_bindir() {
    local dir best="" b ok
    for dir in "$CACHE"/*/bin; do
        [ -d "$dir" ] || continue
        ok=1
        for b in "${BINARIES[@]}"; do [ -x "$dir/$b" ] || ok=0; done
        [ "$ok" -eq 1 ] || continue
        if [ -z "$best" ] || dpkg --compare-versions "$(basename "$(dirname "$dir")")" gt \
            "$(basename "$(dirname "$best")")"; then
            best="$dir"
        fi
    done
    [ -n "$best" ] && printf '%s\n' "$best"
}

# Source package version apt would fetch, if deb-src lists know kubernetes.
kube_source_version() {
    local v best=""
    while read -r v; do
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best="$v"; fi
    done < <(apt-cache showsrc --only-source kubernetes 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$best" ] && printf '%s\n' "$best"
}

# Adds deb-src entries mirroring the machine's main Debian archive (the suites
# <codename> and <codename>-updates that it already uses as `deb`) in a file of
# its own, unless `apt-cache showsrc kubernetes` already works.
ensure_deb_src() {
    [ -n "$(kube_source_version)" ] && return 0
    local file=/etc/apt/sources.list.d/drover-deb-src.sources codename uri suites keyring
    codename="$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')"
    [ -n "$codename" ] || die "no VERSION_CODENAME in /etc/os-release"
    # Lines "URI SUITE" of the configured binary (deb) archives.
    local targets
    # shellcheck disable=SC2016 # $(...) are apt's format fields
    targets="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 'Target-Of: deb' |
        sort -u)"
    uri="$(awk -v s="$codename" '$2 == s { print $1; exit }' <<<"$targets")"
    [ -n "$uri" ] || die "no 'deb' source for suite $codename found (apt-get indextargets); cannot add deb-src"
    suites="$codename"
    if awk -v u="$uri" -v s="$codename-updates" '$1 == u && $2 == s { f = 1 } END { exit !f }' <<<"$targets"; then
        suites+=" $codename-updates"
    fi
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    {
        echo "# Added by drover scripts/services/kube.sh (apt-get source kubernetes)."
        echo "Types: deb-src"
        echo "URIs: ${uri%/}"
        echo "Suites: $suites"
        echo "Components: main"
        [ -f "$keyring" ] && echo "Signed-By: $keyring"
    } >"$file"
    step "added deb-src for ${uri%/} $suites in $file; apt-get update"
    apt-get update -q >"$SERVICES_DIR/apt-$SERVICE_NAME.log" 2>&1 ||
        { tail -n 20 "$SERVICES_DIR/apt-$SERVICE_NAME.log" >&2; die "apt-get update failed"; }
    [ -n "$(kube_source_version)" ] || die "apt-cache showsrc kubernetes finds nothing even with $file"
}

# Builds the three binaries from Debian's kubernetes source into
# $CACHE/<version>/bin. Serialized by a lock; the build tree is removed after a
# successful build.
build_binaries() {
    apt_install golang-go rsync make dpkg-dev golang-github-modern-go-reflect2-dev
    mkdir -p "$SERVICES_DIR" "$CACHE"
    ensure_deb_src
    local ver src tree log t0 b
    ver="$(kube_source_version)"
    log="$CACHE/$ver/build.log"
    src="$CACHE/src"
    mkdir -p "$CACHE/$ver"
    exec 9>"$CACHE/build.lock"
    flock 9
    # Another start may have built it while we waited for the lock.
    if cached_bindir >/dev/null; then
        exec 9>&-
        return 0
    fi
    t0="$(now)"
    step "building Kubernetes $ver from source (once per machine, about 12 min on 2 cores; log: $log)"
    rm -rf "$src"
    mkdir -p "$src"
    : >"$log"
    (cd "$src" && apt-get source -q "kubernetes=$ver") >>"$log" 2>&1 ||
        { tail -n 40 "$log" >&2; die "apt-get source kubernetes=$ver failed (log: $log)"; }
    tree="$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)"
    if [ -z "$tree" ] || [ ! -d "$tree/vendor/github.com/modern-go/reflect2" ]; then
        die "unexpected source layout under $src (no vendor/github.com/modern-go/reflect2)"
    fi
    # The vendored reflect2 1.0.1 is broken under Go >= 1.18 (Debian's Go is
    # 1.19): the API server dies with a fault in reflect2 on its first status
    # write. Debian's reflect2 1.0.2 is API-compatible; put it in its place.
    rsync -a --delete --exclude=go.mod /usr/share/gocode/src/github.com/modern-go/reflect2/ \
        "$tree/vendor/github.com/modern-go/reflect2/" >>"$log" 2>&1 ||
        { tail -n 20 "$log" >&2; die "replacing vendored reflect2 failed"; }
    # As debian/rules does: no cgo (static binaries). Go's caches stay in the
    # build tree. The version (v1.20.2) comes from the archive's export-subst
    # stamp in hack/lib/version.sh, so no git is needed.
    if ! (cd "$tree" && env HOME="$src/home" GOCACHE="$src/gocache" GOPATH="$src/gopath" CGO_ENABLED=0 \
        nice -n 10 make WHAT="cmd/kube-apiserver cmd/kube-scheduler cmd/kube-controller-manager") \
        >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "building Kubernetes failed after $(elapsed "$t0") s (log: $log; tree kept in $tree)"
    fi
    rm -rf "$CACHE/$ver/bin.tmp"
    mkdir -p "$CACHE/$ver/bin.tmp"
    for b in "${BINARIES[@]}"; do
        [ -x "$tree/_output/bin/$b" ] || die "build produced no $tree/_output/bin/$b (log: $log)"
        cp "$tree/_output/bin/$b" "$CACHE/$ver/bin.tmp/$b"
    done
    rm -rf "${CACHE:?}/${ver:?}/bin"
    mv "$CACHE/$ver/bin.tmp" "$CACHE/$ver/bin"
    chmod -R a+rX "$CACHE/$ver"
    # Go's module/build caches are written read-only; make them removable.
    chmod -R u+w "$src" 2>/dev/null || true
    rm -rf "$src"
    exec 9>&-
    step "built $("$CACHE/$ver/bin/kube-apiserver" --version) in $(elapsed "$t0") s into $CACHE/$ver/bin"
}

# ------------------------------------------------------ certs and token ----

# Generated once and kept: a CA, the API server's serving certificate (signed
# by the CA, valid for 127.0.0.1 and localhost, so clients can verify it with
# the CA data in the kubeconfig), the service-account signing key pair and the
# bearer token.
ensure_credentials() {
    install -d -m 700 "$PKI"
    if [ ! -s "$PKI/ca.key" ] || [ ! -s "$CA" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
            -keyout "$PKI/ca.key" -out "$CA" -subj "/CN=drover-kube-ca" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1 ||
            die "openssl: creating the CA failed"
        rm -f "$PKI/apiserver.crt"
        step "created CA $CA"
    fi
    if [ ! -s "$PKI/apiserver.key" ] || [ ! -s "$PKI/apiserver.crt" ]; then
        local ext="$PKI/apiserver.ext"
        cat >"$ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
        openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$PKI/apiserver.key" \
            -out "$PKI/apiserver.csr" -subj "/CN=kube-apiserver" >/dev/null 2>&1 ||
            die "openssl: creating the serving key failed"
        openssl x509 -req -sha256 -days 3650 -in "$PKI/apiserver.csr" -CA "$CA" -CAkey "$PKI/ca.key" \
            -set_serial "0x$(openssl rand -hex 16)" -extfile "$ext" -out "$PKI/apiserver.crt" >/dev/null 2>&1 ||
            die "openssl: signing the serving certificate failed"
        rm -f "$PKI/apiserver.csr" "$ext"
        step "created serving certificate $PKI/apiserver.crt (127.0.0.1, localhost)"
    fi
    if [ ! -s "$PKI/sa.key" ] || [ ! -s "$PKI/sa.pub" ]; then
        openssl genrsa -out "$PKI/sa.key" 2048 >/dev/null 2>&1 ||
            die "openssl: creating the service-account key failed"
        openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" >/dev/null 2>&1 ||
            die "openssl: extracting the service-account public key failed"
        step "created service-account key pair"
    fi
    chmod 600 "$PKI"/*.key
    if [ ! -s "$TOKEN_FILE" ]; then
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE")
        step "created bearer token $TOKEN_FILE"
    fi
    chmod 600 "$TOKEN_FILE"
    # --token-auth-file: token,user,uid,"groups". system:masters is bound to
    # cluster-admin by RBAC's bootstrap policy: full rights.
    (umask 077 && printf '%s,drover,drover,"system:masters"\n' "$(cat "$TOKEN_FILE")" >"$TOKENS_CSV")
    write_kubeconfig
}

write_kubeconfig() {
    local tmp="$KUBECONFIG_FILE.tmp"
    (umask 077 && cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: drover
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority-data: $(base64 -w0 <"$CA")
users:
- name: drover
  user:
    token: $(cat "$TOKEN_FILE")
contexts:
- name: drover
  context:
    cluster: drover
    user: drover
    namespace: default
current-context: drover
EOF
    )
    mv "$tmp" "$KUBECONFIG_FILE"
}

# ------------------------------------------------------------------ API ----

# api METHOD PATH [BODY [CONTENT-TYPE]]: the response body on stdout; fails on
# HTTP >= 400 (curl --fail-with-body: the error body is still printed).
api() {
    local method="$1" path="$2" body="${3:-}" ctype="${4:-application/json}"
    local args=(-sS --max-time 10 --fail-with-body --cacert "$CA"
        -H "Authorization: Bearer $(cat "$TOKEN_FILE")" -X "$method")
    [ -n "$body" ] && args+=(-H "Content-Type: $ctype" --data-binary "$body")
    curl "${args[@]}" "https://127.0.0.1:$PORT$path"
}

etcd_healthy() {
    [[ "$(curl -sS --max-time 3 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null || true)" == *'"health":"true"'* ]]
}
apiserver_ready() { [ "$(api GET /readyz 2>/dev/null || true)" = ok ]; }
# The scheduler and controller manager serve /healthz (always allowed, no
# credentials needed) on their secure ports.
healthz() { [ "$(curl -sSk --max-time 3 "https://127.0.0.1:$1/healthz" 2>/dev/null || true)" = ok ]; }
scheduler_healthy() { healthz "$SCHED_PORT"; }
cm_healthy() { healthz "$CM_PORT"; }

# ------------------------------------------------------------- daemons ----

# spawn PIDFILE LOG CMD...: runs CMD detached (own session, working directory
# /, stdin from /dev/null, output to LOG); the pid file is written by the
# process itself just before it execs CMD, so it holds CMD's pid (`$!` would
# be setsid's when the caller uses job control).
spawn() {
    local pidfile="$1" log="$2" i
    shift 2
    rm -f "$pidfile"
    printf '==== %s %s\n' "$(date -Is)" "$*" >"$log"
    # shellcheck disable=SC2016 # $$ and $1 are for the inner shell
    (cd / && setsid -f bash -c 'echo $$ >"$1"; shift; exec "$@"' spawn "$pidfile" "$@" </dev/null >>"$log" 2>&1)
    for ((i = 0; i < 50; i++)); do
        [ -s "$pidfile" ] && return 0
        sleep 0.1
    done
    fail "$1 wrote no pid file $pidfile"
}

# wait_healthy NAME PIDFILE COMM LOG CHECK: waits until CHECK succeeds; dies
# with the log tail if the process exits or START_TIMEOUT passes.
wait_healthy() {
    local name="$1" pidfile="$2" comm="$3" log="$4" check="$5" i
    for ((i = 0; i < START_TIMEOUT * 5; i++)); do
        "$check" && return 0
        if ! pidfile_pid "$pidfile" "$comm" >/dev/null; then
            show_logs "$log"
            die "$name exited during start-up (log: $log)"
        fi
        sleep 0.2
    done
    show_logs "$log"
    die "$name not healthy after ${START_TIMEOUT} s (log: $log)"
}

# Started components are counted here; 0 means all four were already up.
STARTED=0

# start_daemon NAME PIDFILE COMM LOG CHECK CMD...
start_daemon() {
    local name="$1" pidfile="$2" comm="$3" log="$4" check="$5" pid t0
    shift 5
    if pid="$(pidfile_pid "$pidfile" "$comm")"; then
        wait_healthy "$name" "$pidfile" "$comm" "$log" "$check"
        step "$name already running (pid $pid)"
        return 0
    fi
    t0="$(now)"
    spawn "$pidfile" "$log" "$@"
    wait_healthy "$name" "$pidfile" "$comm" "$log" "$check"
    STARTED=$((STARTED + 1))
    step "started $name (pid $(cat "$pidfile"), $(elapsed "$t0") s)"
}

start_etcd() {
    install -d -m 700 "$ETCD_DATA"
    start_daemon etcd "$ETCD_PID" etcd "$ETCD_LOG" etcd_healthy \
        etcd --name drover --data-dir "$ETCD_DATA" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "drover=http://127.0.0.1:$ETCD_PEER_PORT" \
        --logger zap --log-outputs stderr
}

start_apiserver() {
    local bin="$1"
    # Flags beyond the obvious:
    #  --advertise-address=127.0.0.1: otherwise derived from the host's default
    #    route interface (fails on a machine without one).
    #  --endpoint-reconciler-type=none: a loopback address is not a valid
    #    Endpoints address for the `kubernetes` Service; skip that reconciler.
    #  --insecure-port=0: no plain-HTTP port 8080 (1.20 still has the flag).
    #  --service-account-{issuer,key-file,signing-key-file}: required by 1.20.
    #  --disable-admission-plugins: ServiceAccount would require the `default`
    #    ServiceAccount (and its token) before any pod can be created;
    #    TaintNodesByCondition would put the node.kubernetes.io/not-ready taint
    #    on our Node when it is created (normally the kubelet clears it).
    start_daemon kube-apiserver "$APISERVER_PID" kube-apiserver "$APISERVER_LOG" apiserver_ready \
        "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --secure-port "$PORT" --insecure-port 0 \
        --advertise-address 127.0.0.1 --endpoint-reconciler-type none \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --token-auth-file "$TOKENS_CSV" \
        --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$PKI/sa.pub" \
        --service-account-signing-key-file "$PKI/sa.key" \
        --service-cluster-ip-range 10.0.0.0/24 \
        --disable-admission-plugins ServiceAccount,TaintNodesByCondition \
        --profiling=false
}

start_scheduler() {
    local bin="$1"
    # --leader-elect=false: a single instance; with leader election a restarted
    #   scheduler waits for its predecessor's lease to expire (15 s).
    # --port=0: no insecure port (1.20 still has 10251). /healthz is served on
    #   the secure port to anyone. No --authentication-kubeconfig or
    #   --authorization-kubeconfig (it logs three warnings at start-up): with
    #   them it wants configmap kube-system/extension-apiserver-authentication
    #   with client and request-header CAs, and logs errors in a loop without.
    start_daemon kube-scheduler "$SCHED_PID" kube-scheduler "$SCHED_LOG" scheduler_healthy \
        "$bin/kube-scheduler" \
        --kubeconfig "$KUBECONFIG_FILE" \
        --leader-elect=false \
        --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --port 0 \
        --profiling=false
}

start_controller_manager() {
    local bin="$1"
    # --controllers=*,-nodelifecycle: without a kubelet nobody renews the node's
    #   heartbeat; the node lifecycle controller would mark it NotReady after
    #   the grace period (40 s), taint it and evict its pods.
    # --service-account-private-key-file/--root-ca-file: the token controller
    #   can then mint service-account tokens, as in a real cluster.
    # --leader-elect=false, --port=0, no authn/authz kubeconfigs: as for the
    #   scheduler.
    start_daemon kube-controller-manager "$CM_PID" "$CM_COMM" "$CM_LOG" cm_healthy \
        "$bin/kube-controller-manager" \
        --kubeconfig "$KUBECONFIG_FILE" \
        --controllers '*,-nodelifecycle' \
        --service-account-private-key-file "$PKI/sa.key" \
        --root-ca-file "$CA" \
        --leader-elect=false \
        --bind-address 127.0.0.1 --secure-port "$CM_PORT" --port 0 \
        --profiling=false
}

# ---------------------------------------------------------------- node ----

node_status_json() {
    local t
    t="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    cond() { printf '{"type":"%s","status":"%s","reason":"%s","message":"drover test node","lastHeartbeatTime":"%s","lastTransitionTime":"%s"}' "$1" "$2" "$3" "$t" "$t"; }
    cat <<EOF
{"status":{
  "capacity":{"cpu":"$NODE_CPU","memory":"$NODE_MEMORY","pods":"$NODE_PODS"},
  "allocatable":{"cpu":"$NODE_CPU","memory":"$NODE_MEMORY","pods":"$NODE_PODS"},
  "conditions":[$(cond Ready True KubeletReady),$(cond MemoryPressure False KubeletHasSufficientMemory),$(cond DiskPressure False KubeletHasNoDiskPressure),$(cond PIDPressure False KubeletHasSufficientPID)],
  "addresses":[{"type":"InternalIP","address":"127.0.0.1"},{"type":"Hostname","address":"$NODE"}],
  "nodeInfo":{"machineID":"","systemUUID":"","bootID":"","kernelVersion":"","osImage":"drover test node (no kubelet)","containerRuntimeVersion":"","kubeletVersion":"$KUBE_VERSION","kubeProxyVersion":"$KUBE_VERSION","operatingSystem":"linux","architecture":"amd64"}
}}
EOF
}

# Registers the node (or repairs it): Ready, schedulable, no taints.
ensure_node() {
    local out i
    # The `default` namespace is created by the API server shortly after it
    # turns ready.
    for ((i = 0; i < 100; i++)); do
        api GET /api/v1/namespaces/default >/dev/null 2>&1 && break
        sleep 0.1
    done
    api GET /api/v1/namespaces/default >/dev/null 2>&1 || fail "namespace default does not exist"
    if ! api GET "/api/v1/nodes/$NODE" >/dev/null 2>&1; then
        out="$(api POST /api/v1/nodes \
            "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"$NODE\",\"labels\":{\"kubernetes.io/hostname\":\"$NODE\",\"kubernetes.io/os\":\"linux\",\"kubernetes.io/arch\":\"amd64\"}}}" 2>&1)" ||
            [[ "$out" == *AlreadyExists* ]] || fail "creating node $NODE failed: $out"
        step "registered node $NODE"
    fi
    # JSON merge patches: lists (taints, conditions) are replaced as a whole.
    out="$(api PATCH "/api/v1/nodes/$NODE" '{"spec":{"taints":null,"unschedulable":false}}' \
        application/merge-patch+json 2>&1)" || fail "patching node $NODE failed: $out"
    out="$(api PATCH "/api/v1/nodes/$NODE/status" "$(node_status_json)" application/merge-patch+json 2>&1)" ||
        fail "patching status of node $NODE failed: $out"
    [[ "$out" == *'"type": "Ready"'*'"status": "True"'* ]] || fail "node $NODE is not Ready after patching: $out"
}

# A pod must get bound to the node by the scheduler; deleted again at once.
check_scheduling() {
    local name t0 out i bound=0
    name="drover-smoke-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    t0="$(now)"
    out="$(api POST /api/v1/namespaces/default/pods \
        "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"$name\"},\"spec\":{\"restartPolicy\":\"Never\",\"containers\":[{\"name\":\"main\",\"image\":\"busybox\",\"command\":[\"true\"]}]}}" 2>&1)" ||
        fail "creating pod $name failed: $out"
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        out="$(api GET "/api/v1/namespaces/default/pods/$name" 2>&1 || true)"
        if [[ "$out" =~ \"nodeName\":\ *\"$NODE\" ]]; then
            bound=1
            break
        fi
        sleep 0.1
    done
    api DELETE "/api/v1/namespaces/default/pods/$name?gracePeriodSeconds=0" >/dev/null 2>&1 || true
    [ "$bound" -eq 1 ] || fail "pod $name not bound to $NODE after ${START_TIMEOUT} s: $out"
    step "pod $name bound to $NODE in $(elapsed "$t0") s (deleted)"
}

# ------------------------------------------------------------- commands ----

start() {
    need_root
    local t0 bin
    t0="$(now)"
    apt_install etcd-server openssl curl
    if ! bin="$(cached_bindir)"; then
        build_binaries
        bin="$(cached_bindir)" || die "no binaries in $CACHE after the build"
    fi
    KUBE_VERSION="$("$bin/kube-apiserver" --version | awk '{ print $2 }')"
    install -d -m 755 "$SERVICES_DIR"
    install -d -m 700 "$STATE"
    ensure_credentials
    start_etcd
    start_apiserver "$bin"
    start_scheduler "$bin"
    start_controller_manager "$bin"
    ensure_node
    if [ "$STARTED" -gt 0 ]; then
        check_scheduling
        step "up: Kubernetes $KUBE_VERSION at https://127.0.0.1:$PORT, node $NODE ($(elapsed "$t0") s)"
    else
        step "already up: Kubernetes $KUBE_VERSION at https://127.0.0.1:$PORT, node $NODE"
    fi
    step "kubeconfig: $KUBECONFIG_FILE"
}

stop() {
    need_root
    stop_pidfile "$CM_PID" "$CM_COMM" 10
    stop_pidfile "$SCHED_PID" kube-scheduler 10
    stop_pidfile "$APISERVER_PID" kube-apiserver 20
    stop_pidfile "$ETCD_PID" etcd 10
}

status() {
    need_root # the pid files and the token are root's
    local rc=0 pid
    # status_of NAME PIDFILE COMM CHECK
    status_of() {
        if ! pid="$(pidfile_pid "$2" "$3")"; then
            step "$1 not running"
            rc=1
        elif "$4"; then
            step "$1 running (pid $pid), healthy"
        else
            step "$1 running (pid $pid), NOT healthy"
            rc=1
        fi
    }
    status_of etcd "$ETCD_PID" etcd etcd_healthy
    status_of kube-apiserver "$APISERVER_PID" kube-apiserver apiserver_ready
    status_of kube-scheduler "$SCHED_PID" kube-scheduler scheduler_healthy
    status_of kube-controller-manager "$CM_PID" "$CM_COMM" cm_healthy
    [ "$rc" -eq 0 ] && step "kubeconfig: $KUBECONFIG_FILE"
    return "$rc"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
