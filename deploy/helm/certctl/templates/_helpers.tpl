{{/* Names, labels and the checks every template shares. */}}

{{- define "certctl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "certctl.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "certctl.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "certctl.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects: the namespace keeps two releases of the same name apart. */}}
{{- define "certctl.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "certctl.fullname" .) | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/* Objects in another namespace (Secret-target Roles, a ServiceMonitor elsewhere): two
     releases of one name in two namespaces may both put one there, so the release namespace
     is part of the name. Call with (list $ "suffix-or-name" "target-namespace"). */}}
{{- define "certctl.foreignName" -}}
{{- $root := index . 0 }}
{{- if eq (index . 2) $root.Release.Namespace }}
{{- index . 1 }}
{{- else }}
{{- printf "%s-%s" $root.Release.Namespace (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "certctl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "certctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "certctl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "certctl.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The pod's labels: the chart's, then podLabels, which may not touch the selector. */}}
{{- define "certctl.podLabels" -}}
{{- $selector := include "certctl.selectorLabels" . | fromYaml }}
{{- range $key, $_ := .Values.podLabels }}
{{- if hasKey $selector $key }}
{{- fail (printf "podLabels.%s: the Deployment and the Service select the pods by it; use another label" $key) }}
{{- end }}
{{- end }}
{{- toYaml (mergeOverwrite (include "certctl.labels" . | fromYaml) (deepCopy (default (dict) .Values.podLabels))) }}
{{- end }}

{{- define "certctl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "certctl.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" when PostgreSQL is configured. */}}
{{- define "certctl.usesPostgres" -}}
{{- if or .Values.database.existingSecret .Values.database.url }}true{{ end }}
{{- end }}

{{- define "certctl.databaseSecretName" -}}
{{- default (printf "%s-database" (include "certctl.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{- define "certctl.masterKeySecretName" -}}
{{- default (printf "%s-master-key" (include "certctl.fullname" .)) .Values.masterKey.existingSecret }}
{{- end }}

{{- define "certctl.adminKeySecretName" -}}
{{- default (printf "%s-admin-key" (include "certctl.fullname" .)) .Values.adminKeySecret.name }}
{{- end }}

{{/* The Secret the server publishes its CA certificate into: one per release, since two
     releases in a namespace writing one Secret would each replace the other's CA. */}}
{{- define "certctl.caSecretName" -}}
{{- default (printf "%s-ca" (include "certctl.fullname" .)) .Values.server.tls.publishCA.secretName }}
{{- end }}

{{/* "true" when certctl's own certificate is self-signed and it publishes its CA. */}}
{{- define "certctl.publishesCA" -}}
{{- if and (not .Values.server.tls.existingSecret) .Values.server.tls.publishCA.enabled }}true{{ end }}
{{- end }}

{{/* "true" when the pod talks to the Kubernetes API (and needs its token mounted). */}}
{{- define "certctl.usesKubeApi" -}}
{{- if or .Values.auth.kubernetes.enabled (include "certctl.publishesCA" .) .Values.secretTargets.namespaces .Values.adminKeySecret.enabled }}true{{ end }}
{{- end }}

{{/* SQLite on a claim: one writer, so pods are replaced, not rolled. */}}
{{- define "certctl.usesClaim" -}}
{{- if and .Values.persistence.enabled (not (include "certctl.usesPostgres" .)) }}true{{ end }}
{{- end }}

{{/* server.extraConfig.workers (1 if unset), refused as certctl refuses it: the pool sizing
     divides by it, and a 0 failed as Helm's "integer divide by zero". */}}
{{- define "certctl.workers" -}}
{{- $workers := dig "workers" 1 (default (dict) .Values.server.extraConfig) }}
{{- $text := trim (toString $workers) }}
{{- if or (kindIs "bool" $workers) (not (regexMatch "^[0-9]+$" $text)) (lt (atoi $text) 1) (gt (atoi $text) 64) }}
{{- fail (printf "server.extraConfig.workers %v: expected a whole number of server processes from 1 to 64" $workers) }}
{{- end }}
{{- atoi $text }}
{{- end }}

{{/* database-pool-size: database.poolSize, or (0) the largest up to 34 that fits; refused
     when the pods of a rolling update could hold more connections than PostgreSQL takes
     (it then refuses new ones, "too many clients", to the new pod and the old alike). */}}
{{- define "certctl.poolSize" -}}
{{- $db := .Values.database }}
{{- $pool := int $db.poolSize }}
{{- $max := int $db.maxConnections }}
{{- $replicas := int .Values.replicaCount }}
{{- if and (include "certctl.usesPostgres" .) $max (gt $replicas 0) }}
{{- /* No volume with PostgreSQL: a RollingUpdate, Kubernetes' default maxSurge 25 %. */}}
{{- $surge := div (add $replicas 3) 4 }}
{{- $workers := int (include "certctl.workers" .) }}
{{- $processes := mul (add $replicas $surge) $workers }}
{{- $reserved := int $db.reservedConnections }}
{{- $budget := sub $max $reserved }}
{{- /* - 1: the leader's own connection, on which it LISTENs for service changes (one for
     the release, outside its pool: server/service_changes.py). */}}
{{- $fits := sub (div (sub $budget 1) $processes) 1 }}
{{- $who := printf "%d server processes during a rolling update (replicaCount %d + %d surge, × %d workers)" $processes $replicas $surge $workers }}
{{- if and (not $pool) (lt $fits 3) }}
{{- fail (printf "database.maxConnections %d: %s need at least %d PostgreSQL connections (a pool of 3 + 1 each, and 1 the leader listens on), beyond the %d left after reservedConnections %d: raise PostgreSQL's max_connections and database.maxConnections, or run fewer replicas or workers" $max $who (add (mul $processes 4) 1) $budget $reserved) }}
{{- else if not $pool }}
{{- $pool = min 34 $fits }}
{{- else if gt $pool $fits }}
{{- $fix := "run fewer replicas or workers" }}
{{- if ge $fits 3 }}
{{- $fix = printf "set poolSize %d or less (0 sizes it)" $fits }}
{{- end }}
{{- fail (printf "database.poolSize %d: %s hold up to %d PostgreSQL connections (poolSize + 1 each, and 1 the leader listens on), beyond the %d of database.maxConnections %d less reservedConnections %d: %s, or raise PostgreSQL's max_connections and database.maxConnections" $pool $who (add (mul $processes (add $pool 1)) 1) $budget $max $reserved $fix) }}
{{- end }}
{{- end }}
{{- default 34 $pool }}
{{- end }}

{{/* certctl.yaml (DESIGN §3) as a dict, with server.extraConfig merged over it. */}}
{{- define "certctl.config" -}}
{{- $ns := .Release.Namespace }}
{{- $svc := .Values.service.name }}
{{- $tls := dict "min-version" (toString .Values.server.tls.minVersion) }}
{{- if .Values.server.tls.existingSecret }}
{{- $_ := set $tls "mode" "custom" }}
{{- $_ := set $tls "cert-dir" "/etc/certctl/tls" }}
{{- else }}
{{- $_ := set $tls "mode" "self-signed" }}
{{- $sans := list (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- if ne $svc "certctl-server" }}
{{- $sans = prepend $sans $svc }}
{{- end }}
{{- $_ := set $tls "subject-alt-names" (concat $sans .Values.server.tls.subjectAltNames) }}
{{- if include "certctl.publishesCA" . }}
{{- $_ := set $tls "publish-ca-secret" (include "certctl.caSecretName" .) }}
{{- end }}
{{- end }}
{{- $config := dict
  "data-dir" "/var/lib/certctl"
  "listen" "0.0.0.0:8443"
  "log-format" .Values.server.logFormat
  "database-pool-size" (int (include "certctl.poolSize" .))
  "tls" $tls
  "auth" (dict "kubernetes" (dict "enabled" (.Values.auth.kubernetes.enabled | default false)))
}}
{{- with .Values.auth.kubernetes.audiences }}
{{- $_ := set $config.auth.kubernetes "audiences" . }}
{{- end }}
{{- if .Values.adminKeySecret.enabled }}
{{- $_ := set $config.auth "admin-key-secret" (include "certctl.adminKeySecretName" .) }}
{{- end }}
{{- if .Values.monitoring.port }}
{{- /* The metrics listener binds the address the API does: an IPv6-only cluster's
     extraConfig.listen "[::]:8443" gives "[::]:<port>", which Prometheus reaches at the
     pod's IPv6 address (0.0.0.0 would take IPv4 only). */}}
{{- $listen := toString (dig "listen" "0.0.0.0:8443" (default (dict) .Values.server.extraConfig)) }}
{{- $host := regexReplaceAll ":[0-9]+$" $listen "" }}
{{- $_ := set $config "metrics" (dict "listen" (printf "%s:%d" $host (int .Values.monitoring.port))) }}
{{- end }}
{{- toYaml (mustMergeOverwrite $config (deepCopy .Values.server.extraConfig)) }}
{{- end }}

{{/* The ServiceMonitor's tlsConfig: verifying by default (see values.yaml). */}}
{{- define "certctl.serviceMonitorTlsConfig" -}}
{{- $sm := .Values.monitoring.serviceMonitor }}
{{- $tls := deepCopy (default (dict) $sm.tlsConfig) }}
{{- if not $tls }}
{{- if .Values.server.tls.existingSecret }}
{{- $_ := set $tls "ca" (dict "secret" (dict "name" .Values.server.tls.existingSecret "key" "ca.crt")) }}
{{- else if include "certctl.publishesCA" . }}
{{- $_ := set $tls "ca" (dict "secret" (dict "name" (include "certctl.caSecretName" .) "key" "ca.crt")) }}
{{- else }}
{{- fail "monitoring.serviceMonitor.tlsConfig: set it (caFile, ca.secret or insecureSkipVerify) when server.tls.publishCA.enabled is false" }}
{{- end }}
{{- end }}
{{- if and (not (get $tls "insecureSkipVerify")) (not (get $tls "serverName")) $sm.serverName }}
{{- $_ := set $tls "serverName" $sm.serverName }}
{{- end }}
{{- toYaml $tls }}
{{- end }}

{{/* Refuse value combinations that cannot work, with the fix in the message. */}}
{{- define "certctl.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "certctl.usesPostgres" .)) }}
{{- fail "replicaCount > 1 needs PostgreSQL: set database.url or database.existingSecret (SQLite is single-writer)" }}
{{- end }}
{{- include "certctl.validateExtraConfig" . }}
{{- if and (include "certctl.usesKubeApi" .) (eq (include "certctl.serviceAccountName" .) "default") }}
{{- fail "serviceAccount: certctl would run as the namespace's 'default' ServiceAccount, and the chart's Roles (the admin key and CA Secrets, Secret targets, token reviews) would then go to every pod there that runs as it; set serviceAccount.name to a ServiceAccount for certctl alone, or leave serviceAccount.create: true" }}
{{- end }}
{{- if and .Values.server.tls.existingSecret (not (hasKey (default (dict) .Values.podSecurityContext) "fsGroup")) }}
{{- fail "podSecurityContext.fsGroup: server.tls.existingSecret is mounted 0440, readable by root and the fsGroup only (not world-readable as tls.key was before); set fsGroup (default 10001; on OpenShift a group of the namespace's supplemental-groups range)" }}
{{- end }}
{{- $port := int .Values.monitoring.port }}
{{- if or (eq $port 8443) (and $port (eq $port (int .Values.service.port))) }}
{{- fail (printf "monitoring.port %d: the API already uses it (container port 8443, Service port %d); choose another port for the metrics listener, or 0 to serve metrics on the API port" $port (int .Values.service.port)) }}
{{- end }}
{{- $sm := .Values.monitoring.serviceMonitor }}
{{- if and .Values.monitoring.enabled $sm.enabled }}
{{- $bts := default (dict) $sm.bearerTokenSecret }}
{{- if and (not $bts) (not $sm.bearerTokenFile) }}
{{- fail "monitoring.serviceMonitor: set bearerTokenSecret {name, key} (a certctl API key with metrics.read), or bearerTokenFile with auth.kubernetes.enabled" }}
{{- end }}
{{- if and $sm.interval $sm.scrapeTimeout }}
{{- if gt (int64 (include "certctl.durationMs" $sm.scrapeTimeout)) (int64 (include "certctl.durationMs" $sm.interval)) }}
{{- fail (printf "monitoring.serviceMonitor.scrapeTimeout %s is longer than interval %s: Prometheus Operator rejects such a ServiceMonitor (and Prometheus such a scrape); lower scrapeTimeout" $sm.scrapeTimeout $sm.interval) }}
{{- end }}
{{- end }}
{{- if and $bts $sm.bearerTokenFile }}
{{- fail "monitoring.serviceMonitor: set bearerTokenSecret or bearerTokenFile, not both (Prometheus refuses a scrape config with authorization and bearer_token_file, and with it every reload of its configuration)" }}
{{- end }}
{{- if and $bts (or (not $bts.name) (not $bts.key)) }}
{{- fail "monitoring.serviceMonitor.bearerTokenSecret needs both name and key" }}
{{- end }}
{{- if and $sm.bearerTokenFile (not .Values.auth.kubernetes.enabled) }}
{{- fail "monitoring.serviceMonitor.bearerTokenFile sends Prometheus's ServiceAccount token, which certctl accepts only with auth.kubernetes.enabled: true (else every scrape is 401)" }}
{{- end }}
{{- if and .Values.auth.kubernetes.audiences (eq (toString $sm.bearerTokenFile) "/var/run/secrets/kubernetes.io/serviceaccount/token") }}
{{- fail (printf "monitoring.serviceMonitor.bearerTokenFile is Prometheus's default ServiceAccount token, minted for the API server, which auth.kubernetes.audiences %v refuses (every scrape 401); mount a projected serviceAccountToken with one of those audiences into Prometheus and name its file (docs/kubernetes.md, section 5)" .Values.auth.kubernetes.audiences) }}
{{- end }}
{{- if and $sm.namespace (ne $sm.namespace .Release.Namespace) (not $sm.tlsConfig) }}
{{- fail (printf "monitoring.serviceMonitor.namespace %s: Prometheus Operator reads the CA Secret from the ServiceMonitor's namespace, but certctl publishes it in %s; set monitoring.serviceMonitor.tlsConfig (e.g. {ca: {secret: {name: <a copy in %s>, key: ca.crt}}}) or leave namespace empty" $sm.namespace .Release.Namespace $sm.namespace) }}
{{- end }}
{{- end }}
{{- end }}

{{/* server.extraConfig may not change what the chart builds the pod around. */}}
{{- define "certctl.validateExtraConfig" -}}
{{- $extra := default (dict) .Values.server.extraConfig }}
{{- if hasKey $extra "database-url" }}
{{- fail "server.extraConfig.database-url would put the database password in a ConfigMap (and leave the chart set up for SQLite); set database.url, which the chart keeps in a Secret, or database.existingSecret" }}
{{- end }}
{{- $owned := dict
  "data-dir" "persistence (the data volume is mounted at /var/lib/certctl)"
  "tls.mode" "server.tls.existingSecret (custom) or leave it empty (self-signed)"
  "tls.cert-dir" "server.tls.existingSecret (mounted at /etc/certctl/tls)"
  "tls.publish-ca-secret" "server.tls.publishCA (its Role and the ServiceMonitor follow it)"
  "metrics.listen" "monitoring.port (the container and Service ports follow it)"
  "metrics.secure" "monitoring.port (its listener keeps the API's TLS: the probes and the ServiceMonitor speak https)"
  "auth.admin-key-secret" "adminKeySecret (its Role follows it)"
  "database-pool-size" "database.poolSize (checked against database.maxConnections)"
  "auth.kubernetes" "auth.kubernetes.enabled and auth.kubernetes.audiences (the chart also creates the RBAC certctl needs)"
}}
{{- range $path, $use := $owned }}
{{- $node := $extra }}
{{- $found := true }}
{{- range $part := splitList "." $path }}
{{- if and $found (kindIs "map" $node) (hasKey $node $part) }}
{{- $node = index $node $part }}
{{- else }}
{{- $found = false }}
{{- end }}
{{- end }}
{{- if $found }}
{{- fail (printf "server.extraConfig.%s is set by the chart: use %s" $path $use) }}
{{- end }}
{{- end }}
{{- with $extra.listen }}
{{- if ne (last (splitList ":" (toString .))) "8443" }}
{{- fail (printf "server.extraConfig.listen %s: the container port, probes and Service target port 8443; keep the port (e.g. [::]:8443 to listen on IPv6)" .) }}
{{- end }}
{{- end }}
{{- if eq (toString (dig "tls" "client-auth" "" $extra)) "required" }}
{{- fail "server.extraConfig.tls.client-auth: required refuses the handshake of every client without a certificate, and the kubelet's HTTPS probes and Prometheus send none, so the pod would never become ready; use optional (a client certificate still authenticates through auth.client-cert-mappings)" }}
{{- end }}
{{- end }}

{{/* Milliseconds of a Prometheus duration (1h30m, 10s, 500ms); the schema checked its form. */}}
{{- define "certctl.durationMs" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 "w" 604800000 "y" 31536000000 }}
{{- $total := int64 0 }}
{{- range regexFindAll "[0-9]+(ms|[ywdhms])" (toString .) -1 }}
{{- $unit := regexFind "(ms|[ywdhms])$" . }}
{{- $total = add $total (mul (int64 (trimSuffix $unit .)) (get $units $unit)) }}
{{- end }}
{{- $total }}
{{- end }}
