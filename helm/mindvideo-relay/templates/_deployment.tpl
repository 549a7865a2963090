{{/*
One role's Deployment: (dict "root" $ "role" "requests"|"webhooks"). Both run the same image and
settings; RELAY_ROLE picks the half of the relay the pod runs.
*/}}
{{- define "mindvideo-relay.deployment" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $v := $root.Values }}
{{- include "mindvideo-relay.validate" $root }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "mindvideo-relay.roleName" . }}
  labels:
    {{- include "mindvideo-relay.roleLabels" . | nindent 4 }}
spec:
  {{- if eq $role "webhooks" }}
  replicas: {{ $v.webhooks.replicaCount }}
  {{- else if not $v.keda.enabled }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "mindvideo-relay.roleSelectorLabels" . | nindent 6 }}
  strategy:
    # Consumers hand partitions over on a rebalance; surge keeps capacity during a rollout, and
    # the webhook dispatcher never drops to zero pods.
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      labels:
        {{- include "mindvideo-relay.roleLabels" . | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "mindvideo-relay.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ include "mindvideo-relay.terminationGracePeriodSeconds" $root }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      containers:
        - name: relay
          image: {{ include "mindvideo-relay.image" $root | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args: ["run"]
          ports:
            - name: http
              containerPort: {{ $v.containerPort }}
              protocol: TCP
          env:
            - name: RELAY_ROLE
              value: {{ $role | quote }}
            - name: RELAY_HTTP_HOST
              value: "0.0.0.0"
            - name: RELAY_HTTP_PORT
              value: {{ $v.containerPort | quote }}
            {{- include "mindvideo-relay.configEnv" $root | trim | nindent 12 }}
            {{- /* The webhook dispatcher never calls MindVideo (the relay does not ask it for a key). */}}
            {{- if eq $role "requests" }}
            {{- include "mindvideo-relay.secretEnv" (dict "name" "RELAY_MINDVIDEO_API_KEY" "ref" (dict "existingSecret" (required "secrets.mindvideoApiKey.existingSecret is required" $v.secrets.mindvideoApiKey.existingSecret) "key" $v.secrets.mindvideoApiKey.key)) | nindent 12 }}
            {{- end }}
            {{- if $v.secrets.webhookSecrets.existingSecret }}
            {{- include "mindvideo-relay.secretEnv" (dict "name" "RELAY_WEBHOOK_SECRETS" "ref" $v.secrets.webhookSecrets) | nindent 12 }}
            {{- end }}
            {{- if $v.secrets.httpToken.existingSecret }}
            {{- include "mindvideo-relay.secretEnv" (dict "name" "RELAY_HTTP_TOKEN" "ref" $v.secrets.httpToken) | nindent 12 }}
            {{- end }}
            {{- if $v.secrets.redisUrl.existingSecret }}
            {{- include "mindvideo-relay.secretEnv" (dict "name" "RELAY_REDIS_URL" "ref" $v.secrets.redisUrl) | nindent 12 }}
            {{- end }}
            {{- if $v.secrets.redisSentinelPassword.existingSecret }}
            {{- include "mindvideo-relay.secretEnv" (dict "name" "RELAY_REDIS_SENTINEL_PASSWORD" "ref" $v.secrets.redisSentinelPassword) | nindent 12 }}
            {{- end }}
            {{- if $v.secrets.kafkaSaslPassword.existingSecret }}
            {{- include "mindvideo-relay.secretEnv" (dict "name" "RELAY_KAFKA_SASL_PASSWORD" "ref" $v.secrets.kafkaSaslPassword) | nindent 12 }}
            {{- end }}
            {{- with $v.kafkaTls }}
            {{- if or .existingSecret .caSecret }}
            - name: RELAY_KAFKA_SSL_CAFILE
              value: /etc/mindvideo-relay/kafka-tls/{{ .caKey }}
            {{- if .certKey }}
            - name: RELAY_KAFKA_SSL_CERTFILE
              value: /etc/mindvideo-relay/kafka-tls/{{ .certKey }}
            - name: RELAY_KAFKA_SSL_KEYFILE
              value: /etc/mindvideo-relay/kafka-tls/{{ .keyKey }}
            {{- end }}
            {{- end }}
            {{- end }}
            {{- if $v.redisTls.existingSecret }}
            - name: RELAY_REDIS_SSL_CAFILE
              value: /etc/mindvideo-relay/redis-tls/{{ $v.redisTls.caKey }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with $v.extraEnvFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          startupProbe:
            {{- toYaml $v.probes.startup | nindent 12 }}
          livenessProbe:
            {{- toYaml $v.probes.liveness | nindent 12 }}
          readinessProbe:
            {{- toYaml $v.probes.readiness | nindent 12 }}
          resources:
            {{- $resources := $v.resources }}
            {{- if and (eq $role "webhooks") $v.webhooks.resources }}
            {{- $resources = $v.webhooks.resources }}
            {{- end }}
            {{- toYaml $resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if or $v.kafkaTls.existingSecret $v.kafkaTls.caSecret }}
            - name: kafka-tls
              mountPath: /etc/mindvideo-relay/kafka-tls
              readOnly: true
            {{- end }}
            {{- if $v.redisTls.existingSecret }}
            - name: redis-tls
              mountPath: /etc/mindvideo-relay/redis-tls
              readOnly: true
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        # The root filesystem is read-only; /tmp is for libraries that want a scratch file.
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- with $v.kafkaTls }}
        {{- if .caSecret }}
        # The brokers' CA from its own Secret (Strimzi: <cluster>-cluster-ca-cert), the client
        # certificate from existingSecret (the KafkaUser's), side by side in one folder.
        - name: kafka-tls
          projected:
            defaultMode: 0440
            sources:
              - secret:
                  name: {{ .caSecret }}
                  items:
                    - {key: {{ .caKey }}, path: {{ .caKey }}}
              {{- if .certKey }}
              - secret:
                  name: {{ .existingSecret }}
                  items:
                    - {key: {{ .certKey }}, path: {{ .certKey }}}
                    - {key: {{ .keyKey }}, path: {{ .keyKey }}}
              {{- end }}
        {{- else if .existingSecret }}
        - name: kafka-tls
          secret:
            secretName: {{ .existingSecret }}
            defaultMode: 0440
            items:
              - {key: {{ .caKey }}, path: {{ .caKey }}}
              {{- if .certKey }}
              - {key: {{ .certKey }}, path: {{ .certKey }}}
              - {key: {{ .keyKey }}, path: {{ .keyKey }}}
              {{- end }}
        {{- end }}
        {{- end }}
        {{- if $v.redisTls.existingSecret }}
        - name: redis-tls
          secret:
            secretName: {{ $v.redisTls.existingSecret }}
            defaultMode: 0440
            items:
              - {key: {{ $v.redisTls.caKey }}, path: {{ $v.redisTls.caKey }}}
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
