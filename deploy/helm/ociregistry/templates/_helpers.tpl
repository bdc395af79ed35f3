{{/* Names, labels and what the chart reads from the server's config (.Values.config). */}}

{{- define "ociregistry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ociregistry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ociregistry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ociregistry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ociregistry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ociregistry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ociregistry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ociregistry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ociregistry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the config keeps the cache in a bucket (storage.s3). */}}
{{- define "ociregistry.s3" -}}
{{- if dig "storage" "s3" "" .Values.config }}true{{ end }}
{{- end }}

{{/* "true" when the replicas share blob fetches (cluster). */}}
{{- define "ociregistry.cluster" -}}
{{- if dig "cluster" "" .Values.config }}true{{ end }}
{{- end }}

{{/* "true" for a StatefulSet with a volume claim per replica; else a Deployment. */}}
{{- define "ociregistry.stateful" -}}
{{- if and .Values.persistence.enabled (not (include "ociregistry.s3" .)) }}true{{ end }}
{{- end }}

{{- define "ociregistry.port" -}}
{{- dig "port" 8080 .Values.config | int }}
{{- end }}

{{- define "ociregistry.healthPort" -}}
{{- required "config.health must be set: the liveness and readiness probes use /healthz and /readyz on it" (dig "health" "" .Values.config) | int }}
{{- end }}

{{- define "ociregistry.metricsPort" -}}
{{- $m := dig "metrics" "" .Values.config }}{{ if $m }}{{ $m | int }}{{ end }}
{{- end }}

{{/* The admin API's port when config.admin.address is set (IP:PORT). */}}
{{- define "ociregistry.adminPort" -}}
{{- $a := dig "admin" "address" "" .Values.config | toString }}
{{- if $a }}{{ regexFind "[0-9]+$" $a }}{{ end }}
{{- end }}

{{- define "ociregistry.imagePath" -}}
{{- dig "imagePath" "/var/lib/ociregistry" .Values.config }}
{{- end }}

{{- define "ociregistry.pluginDir" -}}
{{- dig "pluginDir" "/usr/lib/ociregistry/plugins" .Values.config }}
{{- end }}

{{- define "ociregistry.secretName" -}}
{{- default (include "ociregistry.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* The environment variables the config reads secrets from, one per line. */}}
{{- define "ociregistry.secretEnvNames" -}}
{{- $c := .Values.config }}
{{- range (dig "registries" list $c) }}
{{- with (dig "auth" "passwordFromEnv" "" .) }}{{ . }}{{ "\n" }}{{ end }}
{{- end }}
{{- with (dig "admin" "tokenFromEnv" "" $c) }}{{ . }}{{ "\n" }}{{ end }}
{{- range (list "accessKeyIdFromEnv" "secretAccessKeyFromEnv" "sessionTokenFromEnv") }}
{{- with (dig "storage" "s3" . "" $c) }}{{ . }}{{ "\n" }}{{ end }}
{{- end }}
{{- with (dig "cluster" "tokenFromEnv" "" $c) }}{{ . }}{{ "\n" }}{{ end }}
{{- end }}

{{/* Fails the rendering when a secret the config reads is given by nothing. */}}
{{- define "ociregistry.checkSecrets" -}}
{{- if not .Values.existingSecret }}
{{- $given := dict }}
{{- range $k, $v := .Values.secrets }}{{ $_ := set $given $k true }}{{ end }}
{{- range .Values.env }}{{ $_ := set $given .name true }}{{ end }}
{{- range (include "ociregistry.secretEnvNames" . | splitList "\n") }}
{{- if and . (not (hasKey $given .)) }}
{{- fail (printf "the config reads the secret from the environment variable %s: set secrets.%s (or existingSecret)" . .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (include "ociregistry.cluster" .) (not (include "ociregistry.s3" .)) }}
{{- fail "config.cluster needs config.storage.s3 (the replicas share a bucket)" }}
{{- end }}
{{- end }}

{{/* A Kubernetes quantity (20Gi, 500M, 1T, bytes) as a number of bytes. */}}
{{- define "ociregistry.bytes" -}}
{{- $q := toString . }}
{{- $units := list (list "Ki" 1024) (list "Mi" 1048576) (list "Gi" 1073741824) (list "Ti" 1099511627776) (list "k" 1000) (list "K" 1000) (list "M" 1000000) (list "G" 1000000000) (list "T" 1000000000000) }}
{{- $out := "" }}
{{- range $units }}
{{- if and (not $out) (hasSuffix (index . 0) $q) }}
{{- $out = mul (trimSuffix (index . 0) $q | int64) (index . 1) }}
{{- end }}
{{- end }}
{{- if $out }}{{ $out }}{{ else }}{{ $q | int64 }}{{ end }}
{{- end }}

{{/* The PromQL selector of this release's series. */}}
{{- define "ociregistry.promSelector" -}}
{{- default (printf "namespace=\"%s\", job=\"%s\"" .Release.Namespace (include "ociregistry.fullname" .)) .Values.prometheusRule.selector }}
{{- end }}
