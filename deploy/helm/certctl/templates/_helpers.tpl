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
{{- $_ := set $tls "publish-ca-secret" .Values.server.tls.publishCA.secretName }}
{{- end }}
{{- end }}
{{- $config := dict
  "data-dir" "/var/lib/certctl"
  "listen" "0.0.0.0:8443"
  "log-format" .Values.server.logFormat
  "tls" $tls
  "auth" (dict "kubernetes" (dict "enabled" (.Values.auth.kubernetes.enabled | default false)))
}}
{{- if .Values.adminKeySecret.enabled }}
{{- $_ := set $config.auth "admin-key-secret" (include "certctl.adminKeySecretName" .) }}
{{- end }}
{{- if .Values.monitoring.port }}
{{- $_ := set $config "metrics" (dict "listen" (printf "0.0.0.0:%d" (int .Values.monitoring.port))) }}
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
{{- $_ := set $tls "ca" (dict "secret" (dict "name" .Values.server.tls.publishCA.secretName "key" "ca.crt")) }}
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
{{- $sm := .Values.monitoring.serviceMonitor }}
{{- if and .Values.monitoring.enabled $sm.enabled }}
{{- $bts := default (dict) $sm.bearerTokenSecret }}
{{- if and (not $bts) (not $sm.bearerTokenFile) }}
{{- fail "monitoring.serviceMonitor: set bearerTokenSecret {name, key} (a certctl API key with metrics.read), or bearerTokenFile with auth.kubernetes.enabled" }}
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
{{- if and $sm.namespace (ne $sm.namespace .Release.Namespace) (not $sm.tlsConfig) }}
{{- fail (printf "monitoring.serviceMonitor.namespace %s: Prometheus Operator reads the CA Secret from the ServiceMonitor's namespace, but certctl publishes it in %s; set monitoring.serviceMonitor.tlsConfig (e.g. {ca: {secret: {name: <a copy in %s>, key: ca.crt}}}) or leave namespace empty" $sm.namespace .Release.Namespace $sm.namespace) }}
{{- end }}
{{- end }}
{{- end }}
