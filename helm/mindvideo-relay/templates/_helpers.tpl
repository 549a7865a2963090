{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "mindvideo-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, unless it already contains the chart name.
Truncated to 54 characters so that "-requests" and "-webhooks" still fit in 63. */}}
{{- define "mindvideo-relay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mindvideo-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selects every pod of the release, both roles (the Service, the NetworkPolicy). */}}
{{- define "mindvideo-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mindvideo-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mindvideo-relay.labels" -}}
helm.sh/chart: {{ include "mindvideo-relay.chart" . }}
{{ include "mindvideo-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mindvideo-relay
{{- end }}

{{/* One role's pods: (dict "root" $ "role" "requests"|"webhooks"). */}}
{{- define "mindvideo-relay.roleSelectorLabels" -}}
{{ include "mindvideo-relay.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "mindvideo-relay.roleLabels" -}}
{{ include "mindvideo-relay.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "mindvideo-relay.roleName" -}}
{{- printf "%s-%s" (include "mindvideo-relay.fullname" .root) .role }}
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
The shutdown grace in seconds, from every place it can be set: RELAY_SHUTDOWN_GRACE_S in extraEnv
(it comes last, so it wins) or else config.shutdown_grace_s (else the relay's default, 30). A value
the chart cannot read (valueFrom) is refused: the grace period would be a guess.
*/}}
{{- define "mindvideo-relay.shutdownGraceSeconds" -}}
{{- $grace := default 30 .Values.config.shutdown_grace_s }}
{{- range .Values.extraEnv }}
{{- if eq .name "RELAY_SHUTDOWN_GRACE_S" }}
{{- if not (hasKey . "value") }}
{{- fail "extraEnv RELAY_SHUTDOWN_GRACE_S must be a plain value (or use config.shutdown_grace_s): terminationGracePeriodSeconds is derived from it" }}
{{- end }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?$" (toString .value)) }}
{{- fail (printf "extraEnv RELAY_SHUTDOWN_GRACE_S=%q is not a number of seconds" (toString .value)) }}
{{- end }}
{{- $grace = .value }}
{{- end }}
{{- end }}
{{- int (ceil (float64 $grace)) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: longer than the shutdown grace plus the relay's 10 s for closing
(relay/shutdown.py SHUTDOWN_CLOSE_S), so the relay finishes its own drain (stop fetching, hand
over, commit) or ends itself (exit code 4) before the kubelet's SIGKILL.
*/}}
{{- define "mindvideo-relay.terminationGracePeriodSeconds" -}}
{{- $grace := int (include "mindvideo-relay.shutdownGraceSeconds" .) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $grace (int .Values.terminationGraceExtraSeconds) | max (add $grace 11) }}
{{- else }}
{{- $fixed := int .Values.terminationGracePeriodSeconds }}
{{- if le $fixed (add $grace 10) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed the shutdown grace RELAY_SHUTDOWN_GRACE_S (%d) plus the relay's 10 s for closing" $fixed $grace) }}
{{- end }}
{{- $fixed }}
{{- end }}
{{- end }}

{{/* Settings the chart sets itself, never from config or extraEnv. */}}
{{- define "mindvideo-relay.chartOwnedSettings" -}}
{{- list "RELAY_HTTP_HOST" "RELAY_HTTP_PORT" "RELAY_ROLE" "RELAY_WEBHOOKS_ENABLED" "RELAY_KAFKA_SSL_CAFILE" "RELAY_KAFKA_SSL_CERTFILE" "RELAY_KAFKA_SSL_KEYFILE" "RELAY_REDIS_SSL_CAFILE" | toJson }}
{{- end }}

{{/* Secret settings: refused in config, set from .Values.secrets. */}}
{{- define "mindvideo-relay.secretSettings" -}}
{{- dict "RELAY_MINDVIDEO_API_KEY" "mindvideoApiKey" "RELAY_WEBHOOK_SECRETS" "webhookSecrets" "RELAY_HTTP_TOKEN" "httpToken" "RELAY_KAFKA_SASL_PASSWORD" "kafkaSaslPassword" "RELAY_REDIS_SENTINEL_PASSWORD" "redisSentinelPassword" | toJson }}
{{- end }}

{{/*
RELAY_* variables from .Values.config (budgets, price_hints and webhook_rate_limits given as YAML
are rendered as the JSON the relay reads). A name that extraEnv also sets is left to extraEnv (e.g.
RELAY_REDIS_URL from a Secret), and so is redis_url when secrets.redisUrl is set: no duplicates.
*/}}
{{- define "mindvideo-relay.configEnv" -}}
{{- $owned := include "mindvideo-relay.chartOwnedSettings" . | fromJsonArray }}
{{- $json := list "budgets" "price_hints" "webhook_rate_limits" }}
{{- $secrets := include "mindvideo-relay.secretSettings" . | fromJson }}
{{- $skip := list }}
{{- range .Values.extraEnv }}
{{- $skip = append $skip .name }}
{{- end }}
{{- if .Values.secrets.redisUrl.existingSecret }}
{{- $skip = append $skip "RELAY_REDIS_URL" }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{- $name := printf "RELAY_%s" (upper $key) }}
{{- if has $name $owned }}
{{- fail (printf "config.%s is set by the chart (containerPort, the Deployment's role, kafkaTls, redisTls); remove it from config" $key) }}
{{- end }}
{{- if hasKey $secrets $name }}
{{- fail (printf "config.%s is a secret: reference an existing Secret under secrets.%s" $key (get $secrets $name)) }}
{{- end }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "") (has $name $skip)) }}
- name: {{ $name }}
  {{- if and (has $key $json) (not (kindIs "string" $value)) }}
  value: {{ toJson $value | quote }}
  {{- else }}
  value: {{ include "mindvideo-relay.envValue" $value | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A value as an environment string. values.yaml numbers arrive as float64, and Go prints a whole
float64 of a million or more in e-notation ("1e+06"), which the relay would not parse as an int.
A list becomes the comma-separated form the relay reads.
*/}}
{{- define "mindvideo-relay.envValue" -}}
{{- if kindIs "slice" . }}
{{- $parts := list }}
{{- range . }}
{{- $parts = append $parts (include "mindvideo-relay.envValue" .) }}
{{- end }}
{{- join "," $parts }}
{{- else if and (kindIs "float64" .) (eq . (floor .)) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* An env entry from a Secret: (dict "name" "RELAY_X" "ref" .Values.secrets.x). */}}
{{- define "mindvideo-relay.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.existingSecret }}
      key: {{ .ref.key }}
      {{- if .ref.optional }}
      optional: true
      {{- end }}
{{- end }}

{{/* Checks across values that the schema cannot express. */}}
{{- define "mindvideo-relay.validate" -}}
{{- $owned := include "mindvideo-relay.chartOwnedSettings" . | fromJsonArray }}
{{- $secrets := include "mindvideo-relay.secretSettings" . | fromJson }}
{{- $extra := list }}
{{- range .Values.extraEnv }}
{{- if has .name $owned }}
{{- fail (printf "extraEnv %s is set by the chart; remove it" .name) }}
{{- end }}
{{- $extra = append $extra .name }}
{{- end }}
{{- range $name, $value := $secrets }}
{{- if and (has $name $extra) (get $.Values.secrets $value).existingSecret }}
{{- fail (printf "%s is set both by secrets.%s and by extraEnv; keep one" $name $value) }}
{{- end }}
{{- end }}
{{- $protocol := upper (toString (default "" .Values.config.kafka_security_protocol)) }}
{{- if and (hasPrefix "SASL_" $protocol) (not .Values.secrets.kafkaSaslPassword.existingSecret) (not (has "RELAY_KAFKA_SASL_PASSWORD" $extra)) }}
{{- fail (printf "config.kafka_security_protocol %s needs secrets.kafkaSaslPassword.existingSecret (the SASL password)" $protocol) }}
{{- end }}
{{- if and (hasPrefix "SASL_" $protocol) (not .Values.config.kafka_sasl_mechanism) }}
{{- fail (printf "config.kafka_security_protocol %s needs config.kafka_sasl_mechanism" $protocol) }}
{{- end }}
{{- if and (or .Values.kafkaTls.existingSecret .Values.kafkaTls.caSecret) (not (has $protocol (list "SSL" "SASL_SSL"))) }}
{{- fail "kafkaTls is set but config.kafka_security_protocol is neither SSL nor SASL_SSL" }}
{{- end }}
{{- if and .Values.keda.enabled (not (has $protocol (list "" "PLAINTEXT"))) (not .Values.keda.authenticationRef) }}
{{- fail (printf "keda.enabled with config.kafka_security_protocol %s needs keda.authenticationRef: a TriggerAuthentication with the SASL username/password and/or the CA (KEDA cannot read the lag otherwise and would run the fallback replicas forever)" $protocol) }}
{{- end }}
{{- if and .Values.webhooks.enabled (not (or .Values.secrets.webhookSecrets.existingSecret (has "RELAY_WEBHOOK_SECRETS" $extra) .Values.config.webhook_allow_unsigned (has "RELAY_WEBHOOK_ALLOW_UNSIGNED" $extra))) }}
{{- fail "no webhook signing secret: set secrets.webhookSecrets.existingSecret, or config.webhook_allow_unsigned: true to deliver webhooks unsigned on purpose (the relay refuses to start otherwise)" }}
{{- end }}
{{- if and .Values.webhooks.enabled .Values.secrets.webhookSecrets.existingSecret .Values.secrets.webhookSecrets.optional (not (or .Values.config.webhook_allow_unsigned (has "RELAY_WEBHOOK_ALLOW_UNSIGNED" $extra))) }}
{{- fail "secrets.webhookSecrets.optional: true starts the webhooks pods without RELAY_WEBHOOK_SECRETS when the Secret or its key is missing, and the relay then refuses to start (exit code 2, crash loop): set config.webhook_allow_unsigned: true too (deliver unsigned until the key exists), or optional: false (the pods wait for the key)" }}
{{- end }}
{{- if ne (empty .Values.kafkaTls.certKey) (empty .Values.kafkaTls.keyKey) }}
{{- fail "kafkaTls.certKey and kafkaTls.keyKey go together (mutual TLS needs both)" }}
{{- end }}
{{- with .Values.kafkaTls }}
{{- if and .certKey (not .existingSecret) }}
{{- fail "kafkaTls.certKey and keyKey are read from kafkaTls.existingSecret: set it to the Secret with the client certificate" }}
{{- end }}
{{- if and .caSecret .existingSecret (not .certKey) }}
{{- fail "kafkaTls.existingSecret with kafkaTls.caSecret is the client certificate's Secret: set kafkaTls.certKey and keyKey, or leave existingSecret empty" }}
{{- end }}
{{- if and .caSecret (has .caKey (list .certKey .keyKey)) }}
{{- fail (printf "kafkaTls.caKey %q is also certKey or keyKey: the files share one folder, give them different names" .caKey) }}
{{- end }}
{{- end }}
{{- if eq (toString .Values.config.redis_mode) "sentinel" }}
{{- if not (and .Values.config.redis_sentinels .Values.config.redis_sentinel_master) }}
{{- fail "config.redis_mode sentinel needs config.redis_sentinels and config.redis_sentinel_master" }}
{{- end }}
{{- end }}
{{- if .Values.keda.enabled }}
{{- $threshold := int (include "mindvideo-relay.kedaLagThreshold" .) }}
{{- $bound := int (default 5000 .Values.config.max_in_flight) }}
{{- if gt $threshold $bound }}
{{- fail (printf "keda.lagThreshold (%d) exceeds config.max_in_flight (%d): a replica would be full before KEDA adds another" $threshold $bound) }}
{{- end }}
{{- if gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount) }}
{{- fail "keda.minReplicaCount exceeds keda.maxReplicaCount" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
KEDA's target lag per replica. Lag counts work in flight, so it is compared with what one replica
holds: by default 80% of RELAY_MAX_IN_FLIGHT, i.e. a replica is added when the average replica is
four-fifths full.
*/}}
{{- define "mindvideo-relay.kedaLagThreshold" -}}
{{- if .Values.keda.lagThreshold }}
{{- int .Values.keda.lagThreshold }}
{{- else }}
{{- div (mul (int (default 5000 .Values.config.max_in_flight)) 4) 5 }}
{{- end }}
{{- end }}
