{{/*
The NetworkPolicy's Kafka and Redis ports: the ones listed under networkPolicy.kafka.ports /
networkPolicy.redis.ports, plus the ports of the addresses the relay is configured with, so a
broker on 9096 (MSK SASL/SCRAM) or a TLS Redis on 6380 is never blocked by a default list. A
port the chart cannot see (a URL in a Secret, an extraEnv valueFrom, the master a Sentinel names)
must be listed: with nothing listed the render fails rather than block the pods' own Redis.
*/}}

{{/*
The TCP port of one address as the clients read it: "host:port", "[v6]:port", or a bare host
(the default port). (dict "address" "b-1:9096" "default" 9092 "what" "config.kafka_bootstrap_servers")
*/}}
{{- define "mindvideo-relay.addressPort" -}}
{{- $tail := regexFind ":[^:\\]]*$" .address }}
{{- if not $tail }}
{{- .default }}
{{- else }}
{{- $port := trimPrefix ":" $tail }}
{{- if not (regexMatch "^[0-9]{1,5}$" $port) }}
{{- fail (printf "%s: %q has no valid port after its last ':'" .what .address) }}
{{- end }}
{{- if or (lt (atoi $port) 1) (gt (atoi $port) 65535) }}
{{- fail (printf "%s: port %s of %q is not between 1 and 65535" .what $port .address) }}
{{- end }}
{{- atoi $port }}
{{- end }}
{{- end }}

{{/*
A setting as the pods get it, as JSON {"visible": bool, "value": string}: an extraEnv value (it
wins), else config.<key>. Not visible: an extraEnv valueFrom, or (redis_url) secrets.redisUrl.
(dict "root" $ "key" "redis_url")
*/}}
{{- define "mindvideo-relay.visibleSetting" -}}
{{- $name := printf "RELAY_%s" (upper .key) }}
{{- $found := false }}
{{- $setting := dict "visible" true "value" "" }}
{{- range .root.Values.extraEnv }}
{{- if eq .name $name }}
{{- $found = true }}
{{- $setting = dict "visible" (hasKey . "value") "value" (ternary (toString .value) "" (hasKey . "value")) }}
{{- end }}
{{- end }}
{{- if and (not $found) (eq .key "redis_url") .root.Values.secrets.redisUrl.existingSecret }}
{{- $found = true }}
{{- $setting = dict "visible" false "value" "" }}
{{- end }}
{{- if not $found }}
{{- $config := get .root.Values.config .key }}
{{- if not (kindIs "invalid" $config) }}
{{- $_ := set $setting "value" (include "mindvideo-relay.envValue" $config) }}
{{- end }}
{{- end }}
{{- toJson $setting }}
{{- end }}

{{/* Ports of a comma-separated address list, as a JSON list. (dict "list" "a:1,b" "default" 9092 "what" "…") */}}
{{- define "mindvideo-relay.listPorts" -}}
{{- $ports := list }}
{{- range splitList "," .list }}
{{- $address := trim . }}
{{- if $address }}
{{- $ports = append $ports (int (include "mindvideo-relay.addressPort" (dict "address" $address "default" $.default "what" $.what))) }}
{{- end }}
{{- end }}
{{- toJson $ports }}
{{- end }}

{{/* Listed ports first, then the configured ones not listed; ints, no duplicates. */}}
{{- define "mindvideo-relay.unionPorts" -}}
{{- $ports := list }}
{{- range concat .listed .derived }}
{{- $ports = append $ports (int .) }}
{{- end }}
{{- toJson (uniq $ports) }}
{{- end }}

{{/* The Kafka egress ports, as a JSON list. */}}
{{- define "mindvideo-relay.kafkaPorts" -}}
{{- $listed := .Values.networkPolicy.kafka.ports }}
{{- $servers := include "mindvideo-relay.visibleSetting" (dict "root" . "key" "kafka_bootstrap_servers") | fromJson }}
{{- if and (not $servers.visible) (not $listed) }}
{{- fail "networkPolicy: RELAY_KAFKA_BOOTSTRAP_SERVERS comes from extraEnv valueFrom, which the chart cannot read: list the brokers' ports in networkPolicy.kafka.ports" }}
{{- end }}
{{- $derived := include "mindvideo-relay.listPorts" (dict "list" $servers.value "default" 9092 "what" "config.kafka_bootstrap_servers") | fromJsonArray }}
{{- $ports := include "mindvideo-relay.unionPorts" (dict "listed" $listed "derived" $derived) | fromJsonArray }}
{{- if not $ports }}
{{- fail "networkPolicy: no Kafka port to allow (config.kafka_bootstrap_servers is empty): set it, or list the brokers' ports in networkPolicy.kafka.ports" }}
{{- end }}
{{- toJson $ports }}
{{- end }}

{{/*
The Redis egress ports, as a JSON list: the port of the Redis URL (6379 when it names none) and
of each Sentinel. What the chart cannot see must be listed in networkPolicy.redis.ports, or the
render fails: a URL from secrets.redisUrl or an extraEnv valueFrom, and in Sentinel mode the
master's and replicas' ports (the Sentinels name them at run time; the URL's host is not used).
Cluster nodes are expected on the URL's port, or listed.
*/}}
{{- define "mindvideo-relay.redisPorts" -}}
{{- $listed := .Values.networkPolicy.redis.ports }}
{{- $sentinel := eq (toString .Values.config.redis_mode) "sentinel" }}
{{- $derived := list }}
{{- if $sentinel }}
{{- if not $listed }}
{{- fail "networkPolicy: with config.redis_mode sentinel the Sentinels name the master and its replicas at run time: list their port(s) in networkPolicy.redis.ports (often [6379]); the Sentinels' own ports come from config.redis_sentinels" }}
{{- end }}
{{- $sentinels := include "mindvideo-relay.visibleSetting" (dict "root" . "key" "redis_sentinels") | fromJson }}
{{- $derived = include "mindvideo-relay.listPorts" (dict "list" $sentinels.value "default" 26379 "what" "config.redis_sentinels") | fromJsonArray }}
{{- else }}
{{- $url := include "mindvideo-relay.visibleSetting" (dict "root" . "key" "redis_url") | fromJson }}
{{- if and (not $url.visible) (not $listed) }}
{{- fail "networkPolicy: RELAY_REDIS_URL comes from a Secret (secrets.redisUrl or extraEnv valueFrom), which the chart cannot read: list its port in networkPolicy.redis.ports (e.g. [6379], or [6380] for a TLS endpoint on 6380)" }}
{{- end }}
{{- if and $url.value (not (hasPrefix "unix:" $url.value)) }}
{{- $authority := regexReplaceAll "[/?#].*$" (regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://" $url.value "") "" }}
{{- $address := regexReplaceAll "^.*@" $authority "" }}
{{- if not (regexMatch "^(\\[[0-9A-Fa-f:.]+\\]|[^:@\\[\\]]*)(:[0-9]{1,5})?$" $address) }}
{{- fail "config.redis_url: no host[:port] can be read from it (write redis[s]://[:password@]host:port/db with the password URL-encoded, or put a URL with a password in secrets.redisUrl)" }}
{{- end }}
{{- $derived = list (int (include "mindvideo-relay.addressPort" (dict "address" $address "default" 6379 "what" "config.redis_url"))) }}
{{- end }}
{{- end }}
{{- $ports := include "mindvideo-relay.unionPorts" (dict "listed" $listed "derived" $derived) | fromJsonArray }}
{{- if not $ports }}
{{- fail "networkPolicy: no Redis port to allow: list the Redis ports in networkPolicy.redis.ports" }}
{{- end }}
{{- toJson $ports }}
{{- end }}
