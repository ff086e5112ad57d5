#!/usr/bin/env bash
# Local infrastructure for Clairon without Docker: a single-node Apache Kafka
# (KRaft, from Maven Central) and a MariaDB server (from Debian), both bound to
# 127.0.0.1 and kept in a state folder outside the repository.
#
#   eval "$(scripts/infra.sh up)"   install on first use, start both, print the env to export
#   scripts/infra.sh status         show what runs (exit 0 only when both run)
#   scripts/infra.sh env            print the env lines without starting anything
#   scripts/infra.sh down           stop both, keep their data
#   scripts/infra.sh reset          stop both and delete the state folder
#   scripts/infra.sh kafka-start | kafka-stop | mysql-start | mysql-stop
#   scripts/infra.sh kafka-run CLASS ARGS...   run one of Kafka's tools, e.g.
#       kafka-run org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#
# Only the env lines of `up` and `env` and the report of `status` go to stdout;
# everything else goes to stderr. See docs/infrastructure.md.
#
# Settings (environment):
#   CLAIRON_INFRA_DIR              state folder (default ~/.cache/clairon-infra)
#   CLAIRON_KAFKA_PORT             broker listener (default 9092)
#   CLAIRON_KAFKA_CONTROLLER_PORT  KRaft controller listener (default 9093)
#   CLAIRON_MYSQL_PORT             MariaDB port (default 3306)
#   CLAIRON_INFRA_TIMEOUT          seconds to wait for a server to start (default 120)
#   CLAIRON_INFRA_STOP_TIMEOUT     seconds to wait for a clean stop before SIGKILL (default 60)
#   JAVA_HOME                      Java 17+ to run Kafka with (default: `java` on PATH)
#   KAFKA_HEAP_OPTS                default "-Xmx1G -Xms1G", as bin/kafka-server-start.sh
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR
readonly POM="${REPO_DIR}/infra/kafka/pom.xml"

readonly STATE_DIR="${CLAIRON_INFRA_DIR:-${HOME}/.cache/clairon-infra}"
readonly KAFKA_PORT="${CLAIRON_KAFKA_PORT:-9092}"
readonly KAFKA_CONTROLLER_PORT="${CLAIRON_KAFKA_CONTROLLER_PORT:-9093}"
readonly MYSQL_PORT="${CLAIRON_MYSQL_PORT:-3306}"
readonly START_TIMEOUT="${CLAIRON_INFRA_TIMEOUT:-120}"
readonly STOP_TIMEOUT="${CLAIRON_INFRA_STOP_TIMEOUT:-60}"
readonly HOST=127.0.0.1

readonly KAFKA_DIR="${STATE_DIR}/kafka"
readonly KAFKA_LIBS="${KAFKA_DIR}/libs"
readonly KAFKA_CONF="${KAFKA_DIR}/config"
readonly KAFKA_DATA="${KAFKA_DIR}/data"
readonly KAFKA_LOGS="${KAFKA_DIR}/logs"
readonly KAFKA_PID="${KAFKA_DIR}/kafka.pid"

readonly MYSQL_DIR="${STATE_DIR}/mariadb"
readonly MYSQL_DATA="${MYSQL_DIR}/data"
readonly MYSQL_RUN="${MYSQL_DIR}/run"
readonly MYSQL_SOCKET="${MYSQL_RUN}/mysqld.sock"
readonly MYSQL_CNF="${MYSQL_DIR}/my.cnf"
readonly MYSQL_LOG="${MYSQL_DIR}/mariadb.log"
readonly MYSQL_PID="${MYSQL_DIR}/mariadbd.pid"

readonly DB_NAME=clairon
readonly DB_USER=clairon
readonly DB_PASSWORD=clairon
# MySQL 8.0/8.4's default sql_mode, so that SQL MySQL would reject fails here too.
readonly SQL_MODE=ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION

# Keep the caller's stdout on fd 3 for the few lines meant for it; everything
# else (ours and every tool's) goes to stderr. Daemons get neither fd.
exec 3>&1 1>&2

log() { printf 'infra: %s\n' "$*" >&2; }
die() { printf 'infra: error: %s\n' "$*" >&2; exit 1; }
out() { printf '%s\n' "$@" >&3; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

check_number() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a number, got '$2'"; }
check_number CLAIRON_KAFKA_PORT "${KAFKA_PORT}"
check_number CLAIRON_KAFKA_CONTROLLER_PORT "${KAFKA_CONTROLLER_PORT}"
check_number CLAIRON_MYSQL_PORT "${MYSQL_PORT}"
check_number CLAIRON_INFRA_TIMEOUT "${START_TIMEOUT}"
check_number CLAIRON_INFRA_STOP_TIMEOUT "${STOP_TIMEOUT}"
[[ "${KAFKA_PORT}" != "${KAFKA_CONTROLLER_PORT}" ]] || die "the Kafka broker and controller ports must differ"

# ---------------------------------------------------------------------------
# helpers

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 2 bash -c 'exec 5<>"/dev/tcp/$0/$1"' "${HOST}" "$1" 2>/dev/null
}

# who_listens PORT: a description of the listener, for error messages.
who_listens() {
  ss -ltnpH "sport = :$1" 2>/dev/null | sed 's/^/    /' || true
}

# pid_matches PIDFILE PATTERN: the pid file names a live process whose command
# line contains PATTERN (guards against a stale pid file and pid reuse).
pid_matches() {
  local pidfile="$1" pattern="$2" pid cmdline
  [[ -s "${pidfile}" ]] || return 1
  pid="$(<"${pidfile}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/${pid}/cmdline")" || return 1
  [[ "${cmdline}" == *"${pattern}"* ]]
}

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
  local stat
  stat="$(cat 2>/dev/null "/proc/$1/stat")" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# stop_pid PIDFILE PATTERN NAME: SIGTERM, wait for a clean exit, SIGKILL after STOP_TIMEOUT.
stop_pid() {
  local pidfile="$1" pattern="$2" name="$3" pid waited=0
  if ! pid_matches "${pidfile}" "${pattern}"; then
    rm -f "${pidfile}"
    log "${name} is not running"
    return 0
  fi
  pid="$(<"${pidfile}")"
  log "stopping ${name} (pid ${pid})"
  kill -TERM "${pid}" 2>/dev/null || true
  while alive "${pid}"; do
    if ((waited >= STOP_TIMEOUT * 10)); then
      log "${name} did not stop within ${STOP_TIMEOUT}s: killing it"
      kill -KILL "${pid}" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  rm -f "${pidfile}"
  log "${name} stopped after $((waited / 10)).$((waited % 10))s"
}

# start_daemon PIDFILE LOGFILE CMD...: runs CMD in its own session, detached from
# the caller's terminal, stdout and locks; its pid (after exec) goes to PIDFILE.
start_daemon() {
  local pidfile="$1" logfile="$2"
  shift 2
  rm -f "${pidfile}"
  # shellcheck disable=SC2016 # $$ and $0 are expanded by the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "${pidfile}" "$@" \
    </dev/null >>"${logfile}" 2>&1 3>&- 9>&- &
  local waited=0
  while [[ ! -s "${pidfile}" ]] && ((waited < 50)); do
    sleep 0.1
    waited=$((waited + 1))
  done
}

show_log_tail() {
  local file
  for file in "$@"; do
    [[ -s "${file}" ]] || continue
    printf '\n----- last lines of %s -----\n' "${file}" >&2
    tail -n 40 "${file}" >&2
  done
}

apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* yourself"
  [[ "$(id -u)" -eq 0 ]] || die "installing $* needs root: run 'sudo apt-get install $*' once"
  log "installing with apt-get: $*"
  local policy_made=0
  # Refresh the package lists unless that was done in the last day.
  if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n 1)" ]]; then
    apt-get update -qq >&2 || die "apt-get update failed"
  fi
  # Debian starts a package's service on install; ours run in the state folder instead.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 || rc=$?
  if ((policy_made)); then
    rm -f /usr/sbin/policy-rc.d
  fi
  ((rc == 0)) || die "apt-get install $* failed"
}

ensure_state_dir() {
  mkdir -p "${STATE_DIR}"
  # The marker lets `reset` delete only a folder this script made.
  [[ -e "${STATE_DIR}/.clairon-infra" ]] || echo "state folder of scripts/infra.sh" >"${STATE_DIR}/.clairon-infra"
}

# One infra.sh at a time changes the state folder (tests may call it concurrently).
take_lock() {
  ensure_state_dir
  exec 9>"${STATE_DIR}/.lock"
  if ! flock -w 300 9; then
    die "another scripts/infra.sh has held ${STATE_DIR}/.lock for 5 minutes"
  fi
}

print_env() {
  out "export CLAIRON_KAFKA_BROKERS=${HOST}:${KAFKA_PORT}" \
    "export CLAIRON_TEST_KAFKA_BROKERS=${HOST}:${KAFKA_PORT}" \
    "export CLAIRON_TEST_MYSQL_URL=mysql://${DB_USER}:${DB_PASSWORD}@${HOST}:${MYSQL_PORT}/${DB_NAME}"
}

# ---------------------------------------------------------------------------
# Kafka

JAVA=""
find_java() {
  if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
    JAVA="${JAVA_HOME}/bin/java"
  elif command -v java >/dev/null; then
    JAVA="$(command -v java)"
  else
    apt_install openjdk-17-jre-headless
    JAVA="$(command -v java)" || die "java not found after installing openjdk-17-jre-headless"
  fi
  local version major
  version="$("${JAVA}" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p;T;q')"
  major="${version%%.*}"
  [[ "${major}" =~ ^[0-9]+$ && "${major}" -ge 17 ]] \
    || die "Kafka 4.x brokers need Java 17 or newer; ${JAVA} is '${version}' (set JAVA_HOME)"
}

kafka_version() {
  local jar
  for jar in "${KAFKA_LIBS}"/kafka_2.13-*.jar; do
    [[ -e "${jar}" ]] || continue
    jar="${jar##*/kafka_2.13-}"
    printf '%s\n' "${jar%.jar}"
    return 0
  done
  printf 'unknown\n'
}

kafka_install() {
  local stamp wanted
  [[ -f "${POM}" ]] || die "${POM} is missing"
  wanted="$(sha256sum "${POM}" | cut -d' ' -f1)"
  stamp="${KAFKA_LIBS}/.installed"
  if [[ -f "${stamp}" && "$(<"${stamp}")" == "${wanted}" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || apt_install maven
  log "fetching Kafka's jars from Maven Central (${POM##"${REPO_DIR}"/}, cached in ~/.m2)"
  local tmp="${KAFKA_DIR}/libs.new"
  rm -rf "${tmp}" "${KAFKA_DIR}/build"
  mkdir -p "${KAFKA_DIR}"
  # (Maven 3.8 prints colour resets even in batch mode: strip them.)
  if ! mvn -B -q -Dstyle.color=never -f "${POM}" \
    -Dkafka.libs.dir="${tmp}" -Dkafka.build.dir="${KAFKA_DIR}/build" \
    package 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2; then
    die "mvn could not fetch Kafka (see the messages above)"
  fi
  ls "${tmp}"/kafka_2.13-*.jar >/dev/null 2>&1 || die "mvn ran but no kafka_2.13 jar landed in ${tmp}"
  rm -rf "${KAFKA_LIBS}" "${KAFKA_DIR}/build"
  mv "${tmp}" "${KAFKA_LIBS}"
  echo "${wanted}" >"${stamp}"
  log "Kafka $(kafka_version): $(find "${KAFKA_LIBS}" -name '*.jar' | wc -l) jars in ${KAFKA_LIBS}"
}

kafka_write_config() {
  mkdir -p "${KAFKA_CONF}" "${KAFKA_DATA}" "${KAFKA_LOGS}"
  cat >"${KAFKA_CONF}/server.properties" <<EOF
# Written by scripts/infra.sh on every start: edit the script, not this file.
# Single-node KRaft: this process is both the broker and the only controller.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=${HOST}:${KAFKA_CONTROLLER_PORT}
listeners=PLAINTEXT://${HOST}:${KAFKA_PORT},CONTROLLER://${HOST}:${KAFKA_CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://${HOST}:${KAFKA_PORT},CONTROLLER://${HOST}:${KAFKA_CONTROLLER_PORT}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${KAFKA_DATA}

# One broker: every internal topic must live with a single replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

# Consumer groups form at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# The application creates its topics (with their partition counts) itself.
auto.create.topics.enable=false
num.partitions=3
delete.topic.enable=true

# Modest threads and retention for a 2-core developer machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
log.segment.bytes=104857600
log.retention.check.interval.ms=300000
EOF
  cat >"${KAFKA_CONF}/log4j2.properties" <<'EOF'
# Written by scripts/infra.sh. Kafka's own settings (config/log4j2.yaml of the
# release) in log4j2's properties format, which needs no YAML parser.
name = clairon-kafka
status = warn

appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = ${sys:kafka.logs.dir}/server.log
appender.server.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 20MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 5

rootLogger.level = INFO
rootLogger.appenderRef.server.ref = SERVER

logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.requestchannel.name = kafka.network.RequestChannel$
logger.requestchannel.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
# One line per partition created, replayed or loaded: tests create thousands.
logger.replication.name = org.apache.kafka.controller.ReplicationControlManager
logger.replication.level = WARN
logger.configuration.name = org.apache.kafka.controller.ConfigurationControlManager
logger.configuration.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.log.name = org.apache.kafka.storage.internals.log
logger.log.level = WARN
logger.unifiedlog.name = kafka.log
logger.unifiedlog.level = WARN
EOF
  cat >"${KAFKA_CONF}/tools-log4j2.properties" <<'EOF'
# Written by scripts/infra.sh: for Kafka's command-line tools (config/tools-log4j2.yaml
# of the release): warnings and errors to stderr.
name = clairon-kafka-tools
status = warn
shutdownHook = disable
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
EOF
}

kafka_running() { pid_matches "${KAFKA_PID}" "kafka.Kafka ${KAFKA_CONF}/server.properties"; }

# kafka_java CLASS ARGS...: runs one of Kafka's command-line tools, logging warnings to stderr.
kafka_java() {
  "${JAVA}" -Xms64m -Xmx256m -Dlog4j2.configurationFile="${KAFKA_CONF}/tools-log4j2.properties" \
    -cp "${KAFKA_LIBS}/*" "$@"
}

kafka_format() {
  if [[ -f "${KAFKA_DATA}/meta.properties" ]]; then
    local formatted_port
    formatted_port="$(cat "${KAFKA_DIR}/controller.port" 2>/dev/null || echo "${KAFKA_CONTROLLER_PORT}")"
    if [[ "${formatted_port}" != "${KAFKA_CONTROLLER_PORT}" ]]; then
      die "Kafka's storage was formatted with controller port ${formatted_port}, and the quorum keeps it;" \
        "use CLAIRON_KAFKA_CONTROLLER_PORT=${formatted_port}, or 'scripts/infra.sh reset' to start afresh"
    fi
    return 0
  fi
  local cluster_id
  if [[ -s "${KAFKA_DIR}/cluster.id" ]]; then
    cluster_id="$(<"${KAFKA_DIR}/cluster.id")"
  else
    cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid | tail -n 1)"
    [[ "${cluster_id}" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka.tools.StorageTool random-uuid printed '${cluster_id}'"
    echo "${cluster_id}" >"${KAFKA_DIR}/cluster.id"
  fi
  log "formatting Kafka's storage (cluster id ${cluster_id})"
  kafka_java kafka.tools.StorageTool format --standalone --ignore-formatted \
    -t "${cluster_id}" -c "${KAFKA_CONF}/server.properties" >&2 \
    || die "kafka.tools.StorageTool format failed"
  echo "${KAFKA_CONTROLLER_PORT}" >"${KAFKA_DIR}/controller.port"
}

kafka_start() {
  if kafka_running; then
    if port_open "${KAFKA_PORT}"; then
      log "Kafka is running (pid $(<"${KAFKA_PID}")) on ${HOST}:${KAFKA_PORT}"
      return 0
    fi
    die "Kafka (pid $(<"${KAFKA_PID}")) runs but ${HOST}:${KAFKA_PORT} does not answer; it may use other ports:" \
      "try 'scripts/infra.sh kafka-stop' first"
  fi
  local port
  for port in "${KAFKA_PORT}" "${KAFKA_CONTROLLER_PORT}"; do
    if port_open "${port}"; then
      die "port ${port} is taken by another program; set CLAIRON_KAFKA_PORT / CLAIRON_KAFKA_CONTROLLER_PORT" \
        $'\n'"$(who_listens "${port}")"
    fi
  done
  find_java
  kafka_install
  kafka_write_config
  kafka_format

  local started_at=${SECONDS}
  if [[ -f "${KAFKA_LOGS}/server.log" ]]; then
    mv -f "${KAFKA_LOGS}/server.log" "${KAFKA_LOGS}/server.log.previous"
  fi
  : >"${KAFKA_LOGS}/kafka.out"
  log "starting Kafka $(kafka_version) on ${HOST}:${KAFKA_PORT} (controller ${KAFKA_CONTROLLER_PORT})"
  # As bin/kafka-server-start.sh does, with its JVM options.
  # 512 MiB ran out of heap once a few thousand partitions had piled up.
  read -r -a heap_opts <<<"${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
  start_daemon "${KAFKA_PID}" "${KAFKA_LOGS}/kafka.out" \
    "${JAVA}" "${heap_opts[@]}" \
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
    -Dkafka.logs.dir="${KAFKA_LOGS}" \
    -Dlog4j2.configurationFile="${KAFKA_CONF}/log4j2.properties" \
    -cp "${KAFKA_LIBS}/*" \
    kafka.Kafka "${KAFKA_CONF}/server.properties"

  while :; do
    if ! kafka_running; then
      show_log_tail "${KAFKA_LOGS}/kafka.out" "${KAFKA_LOGS}/server.log"
      die "Kafka exited during startup (logs above, in ${KAFKA_LOGS})"
    fi
    if grep -q 'Kafka Server started' "${KAFKA_LOGS}/server.log" 2>/dev/null && port_open "${KAFKA_PORT}"; then
      break
    fi
    if ((SECONDS - started_at >= START_TIMEOUT)); then
      show_log_tail "${KAFKA_LOGS}/kafka.out" "${KAFKA_LOGS}/server.log"
      die "Kafka did not start within ${START_TIMEOUT}s (pid $(<"${KAFKA_PID}") left running; logs above)"
    fi
    sleep 0.2
  done
  log "Kafka is up after $((SECONDS - started_at))s (pid $(<"${KAFKA_PID}"), logs in ${KAFKA_LOGS})"
}

kafka_stop() { stop_pid "${KAFKA_PID}" "kafka.Kafka ${KAFKA_CONF}/server.properties" Kafka; }

# ---------------------------------------------------------------------------
# MariaDB

MARIADBD=""
find_mariadb() {
  local dir
  for dir in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin; do
    if [[ -x "${dir}/mariadbd" ]]; then
      MARIADBD="${dir}/mariadbd"
      break
    fi
  done
  if [[ -z "${MARIADBD}" ]]; then
    apt_install mariadb-server mariadb-client
    [[ -x /usr/sbin/mariadbd ]] || die "mariadbd not found after installing mariadb-server"
    MARIADBD=/usr/sbin/mariadbd
  fi
  command -v mariadb >/dev/null || apt_install mariadb-client
  command -v mariadb-install-db >/dev/null || die "mariadb-install-db not found (package mariadb-server)"
}

mysql_os_user() { id -un; }

mysql_write_config() {
  mkdir -p "${MYSQL_DATA}" "${MYSQL_RUN}"
  cat >"${MYSQL_CNF}" <<EOF
# Written by scripts/infra.sh on every start: edit the script, not this file.
[client]
socket = ${MYSQL_SOCKET}
port = ${MYSQL_PORT}

[mariadbd]
user = $(mysql_os_user)
datadir = ${MYSQL_DATA}
socket = ${MYSQL_SOCKET}
pid-file = ${MYSQL_RUN}/mariadbd.pid
log-error = ${MYSQL_LOG}
bind-address = ${HOST}
port = ${MYSQL_PORT}
skip-name-resolve
skip-log-bin

# Behave like MySQL 8: its default strict sql_mode, case-sensitive table names,
# utf8mb4 everywhere, explicit TIMESTAMP defaults.
sql_mode = ${SQL_MODE}
lower_case_table_names = 0
character-set-server = utf8mb4
collation-server = utf8mb4_unicode_ci
explicit_defaults_for_timestamp = ON
default-storage-engine = InnoDB

# Sized for tests on a small machine.
max_connections = 500
innodb_buffer_pool_size = 256M
innodb_log_file_size = 128M
innodb_fast_shutdown = 1
EOF
}

mysql_running() { pid_matches "${MYSQL_PID}" "--defaults-file=${MYSQL_CNF}"; }

# mysql_admin_sql: runs the SQL on stdin as the server's administrator (unix-socket login).
mysql_admin_sql() {
  mariadb --defaults-file="${MYSQL_CNF}" --protocol=socket -u"$(mysql_os_user)" --batch --skip-column-names
}

mysql_provision() {
  # CREATE ... IF NOT EXISTS and GRANT are idempotent; ALTER USER restores the password.
  mysql_admin_sql <<EOF || die "could not create the ${DB_NAME} database and user"
CREATE DATABASE IF NOT EXISTS \`${DB_NAME}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '${DB_USER}'@'%' IDENTIFIED BY '${DB_PASSWORD}';
CREATE USER IF NOT EXISTS '${DB_USER}'@'localhost' IDENTIFIED BY '${DB_PASSWORD}';
ALTER USER '${DB_USER}'@'%' IDENTIFIED BY '${DB_PASSWORD}';
ALTER USER '${DB_USER}'@'localhost' IDENTIFIED BY '${DB_PASSWORD}';
GRANT ALL PRIVILEGES ON \`${DB_NAME}\`.* TO '${DB_USER}'@'%', '${DB_USER}'@'localhost';
GRANT ALL PRIVILEGES ON \`${DB_NAME}\\_test\\_%\`.* TO '${DB_USER}'@'%', '${DB_USER}'@'localhost';
DROP USER IF EXISTS ''@'localhost';
DROP USER IF EXISTS ''@'$(uname -n)';
FLUSH PRIVILEGES;
EOF
}

mysql_start() {
  if mysql_running; then
    if port_open "${MYSQL_PORT}"; then
      log "MariaDB is running (pid $(<"${MYSQL_PID}")) on ${HOST}:${MYSQL_PORT}"
      mysql_provision
      return 0
    fi
    die "MariaDB (pid $(<"${MYSQL_PID}")) runs but ${HOST}:${MYSQL_PORT} does not answer; it may use another port:" \
      "try 'scripts/infra.sh mysql-stop' first"
  fi
  if port_open "${MYSQL_PORT}"; then
    die "port ${MYSQL_PORT} is taken by another program (a system MySQL/MariaDB?); set CLAIRON_MYSQL_PORT" \
      $'\n'"$(who_listens "${MYSQL_PORT}")"
  fi
  find_mariadb
  mysql_write_config
  if [[ ! -d "${MYSQL_DATA}/mysql" ]]; then
    log "creating MariaDB's data folder ${MYSQL_DATA}"
    rm -rf "${MYSQL_DATA}"
    mkdir -p "${MYSQL_DATA}"
    if ! mariadb-install-db --defaults-file="${MYSQL_CNF}" --skip-test-db \
      --auth-root-authentication-method=socket >"${MYSQL_DIR}/install-db.log" 2>&1; then
      show_log_tail "${MYSQL_DIR}/install-db.log"
      rm -rf "${MYSQL_DATA}"
      die "mariadb-install-db failed"
    fi
  fi

  local started_at=${SECONDS}
  rm -f "${MYSQL_SOCKET}"
  log "starting MariaDB $("${MARIADBD}" --version | sed -n 's/.*Ver \([^ ]*\).*/\1/p') on ${HOST}:${MYSQL_PORT}"
  start_daemon "${MYSQL_PID}" "${MYSQL_LOG}" "${MARIADBD}" --defaults-file="${MYSQL_CNF}"
  while :; do
    if ! mysql_running; then
      show_log_tail "${MYSQL_LOG}"
      die "MariaDB exited during startup (log above: ${MYSQL_LOG})"
    fi
    if mariadb-admin --defaults-file="${MYSQL_CNF}" --protocol=socket -u"$(mysql_os_user)" \
      --connect-timeout=2 ping >/dev/null 2>&1 && port_open "${MYSQL_PORT}"; then
      break
    fi
    if ((SECONDS - started_at >= START_TIMEOUT)); then
      show_log_tail "${MYSQL_LOG}"
      die "MariaDB did not answer within ${START_TIMEOUT}s (pid $(<"${MYSQL_PID}") left running; log above)"
    fi
    sleep 0.2
  done
  mysql_provision
  log "MariaDB is up after $((SECONDS - started_at))s (pid $(<"${MYSQL_PID}"), log ${MYSQL_LOG})"
}

mysql_stop() { stop_pid "${MYSQL_PID}" "--defaults-file=${MYSQL_CNF}" MariaDB; }

# ---------------------------------------------------------------------------
# commands

status() {
  local rc=0
  if kafka_running && port_open "${KAFKA_PORT}"; then
    out "kafka    running  pid $(<"${KAFKA_PID}")  ${HOST}:${KAFKA_PORT} (controller ${KAFKA_CONTROLLER_PORT})  Kafka $(kafka_version)  logs ${KAFKA_LOGS}"
  elif kafka_running; then
    out "kafka    starting pid $(<"${KAFKA_PID}")  ${HOST}:${KAFKA_PORT} not answering yet  logs ${KAFKA_LOGS}"
    rc=3
  else
    out "kafka    stopped"
    rc=3
  fi
  if mysql_running && port_open "${MYSQL_PORT}"; then
    out "mariadb  running  pid $(<"${MYSQL_PID}")  ${HOST}:${MYSQL_PORT}  socket ${MYSQL_SOCKET}  log ${MYSQL_LOG}"
  elif mysql_running; then
    out "mariadb  starting pid $(<"${MYSQL_PID}")  ${HOST}:${MYSQL_PORT} not answering yet  log ${MYSQL_LOG}"
    rc=3
  else
    out "mariadb  stopped"
    rc=3
  fi
  out "state    ${STATE_DIR}"
  return "${rc}"
}

reset() {
  kafka_stop
  mysql_stop
  [[ -e "${STATE_DIR}/.clairon-infra" ]] || die "${STATE_DIR} has no .clairon-infra marker: not deleting it"
  case "$(cd "${STATE_DIR}" && pwd -P)" in
    / | "${HOME}" | "${REPO_DIR}") die "refusing to delete ${STATE_DIR}" ;;
  esac
  log "deleting ${STATE_DIR}"
  find "${STATE_DIR}" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
  rm -f "${STATE_DIR}/.lock"
  rmdir "${STATE_DIR}" 2>/dev/null || true
}

main() {
  local cmd="${1:-}"
  case "${cmd}" in
    up)
      take_lock
      local started_at=${SECONDS}
      mysql_start
      kafka_start
      log "ready in $((SECONDS - started_at))s; state in ${STATE_DIR}"
      print_env
      ;;
    down)
      take_lock
      kafka_stop
      mysql_stop
      ;;
    status) status ;;
    env) print_env ;;
    reset)
      take_lock
      reset
      ;;
    kafka-start)
      take_lock
      kafka_start
      ;;
    kafka-stop)
      take_lock
      kafka_stop
      ;;
    mysql-start)
      take_lock
      mysql_start
      ;;
    mysql-stop)
      take_lock
      mysql_stop
      ;;
    kafka-run)
      shift
      [[ $# -ge 1 ]] || die "usage: scripts/infra.sh kafka-run CLASS ARGS..."
      [[ -f "${KAFKA_LIBS}/.installed" ]] || die "Kafka is not installed yet: run 'scripts/infra.sh up' first"
      find_java
      # The tool's output is the caller's.
      kafka_java "$@" >&3 3>&-
      ;;
    -h | --help | help)
      usage
      ;;
    *)
      usage
      die "unknown command '${cmd}'"
      ;;
  esac
}

main "$@"
