{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "mindvideo-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, unless it already contains the chart name. */}}
{{- define "mindvideo-relay.fullname" -}}
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

{{- define "mindvideo-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mindvideo-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mindvideo-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mindvideo-relay.labels" -}}
helm.sh/chart: {{ include "mindvideo-relay.chart" . }}
{{ include "mindvideo-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: relay
{{- end }}

{{- define "mindvideo-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mindvideo-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mindvideo-relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: longer than RELAY_SHUTDOWN_GRACE_S, so the relay finishes its own
drain (stop fetching, hand over, commit) before the kubelet's SIGKILL.
*/}}
{{- define "mindvideo-relay.terminationGracePeriodSeconds" -}}
{{- $grace := int (ceil (float64 (default 30 .Values.config.shutdown_grace_s))) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $grace (int .Values.terminationGraceExtraSeconds) | max (add $grace 1) }}
{{- else }}
{{- $fixed := int .Values.terminationGracePeriodSeconds }}
{{- if le $fixed $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.shutdown_grace_s (%d)" $fixed $grace) }}
{{- end }}
{{- $fixed }}
{{- end }}
{{- end }}

{{/*
RELAY_* variables from .Values.config; the HTTP address and secrets are set elsewhere. A name that
extraEnv also sets is left to extraEnv (e.g. RELAY_REDIS_URL from a Secret): no duplicate names.
*/}}
{{- define "mindvideo-relay.configEnv" -}}
{{- $extraNames := list }}
{{- range .Values.extraEnv }}
{{- $extraNames = append $extraNames .name }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{- $name := printf "RELAY_%s" (upper $key) }}
{{- if has $name (list "RELAY_HTTP_HOST" "RELAY_HTTP_PORT") }}
{{- fail (printf "config.%s is set by the chart from containerPort; remove it from config" $key) }}
{{- end }}
{{- if has $name (list "RELAY_MINDVIDEO_API_KEY" "RELAY_WEBHOOK_SECRETS") }}
{{- fail (printf "config.%s is a secret: reference an existing Secret under .Values.secrets" $key) }}
{{- end }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "") (has $name $extraNames)) }}
- name: {{ $name }}
  value: {{ include "mindvideo-relay.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A value as an environment string. values.yaml numbers arrive as float64, and Go prints a whole
float64 of a million or more in e-notation ("1e+06"), which the relay would not parse as an int.
*/}}
{{- define "mindvideo-relay.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}
