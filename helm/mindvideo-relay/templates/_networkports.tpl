{{/*
The NetworkPolicy's Kafka and Redis ports: the ones listed under networkPolicy.kafka.ports /
networkPolicy.redis.ports, plus the ports of the addresses the relay is configured with, so a
broker on 9096 (MSK SASL/SCRAM) or a TLS Redis on 6380 is never blocked by a default list.
An address the chart cannot see (a Secret, an extraEnv valueFrom) is covered by the lists only.
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
A setting's plain value as the pods get it: an extraEnv value (it wins), else config.<key>; ""
when the chart cannot see it (extraEnv valueFrom). (dict "root" $ "key" "redis_url")
*/}}
{{- define "mindvideo-relay.visibleSetting" -}}
{{- $name := printf "RELAY_%s" (upper .key) }}
{{- $found := false }}
{{- $value := "" }}
{{- range .root.Values.extraEnv }}
{{- if eq .name $name }}
{{- $found = true }}
{{- $value = ternary (toString .value) "" (hasKey . "value") }}
{{- end }}
{{- end }}
{{- if not $found }}
{{- $config := get .root.Values.config .key }}
{{- if not (kindIs "invalid" $config) }}
{{- $value = include "mindvideo-relay.envValue" $config }}
{{- end }}
{{- end }}
{{- $value }}
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
{{- $servers := include "mindvideo-relay.visibleSetting" (dict "root" . "key" "kafka_bootstrap_servers") }}
{{- $derived := include "mindvideo-relay.listPorts" (dict "list" $servers "default" 9092 "what" "config.kafka_bootstrap_servers") | fromJsonArray }}
{{- $ports := include "mindvideo-relay.unionPorts" (dict "listed" .Values.networkPolicy.kafka.ports "derived" $derived) | fromJsonArray }}
{{- if not $ports }}
{{- fail "networkPolicy.kafka.ports is empty and no broker port can be read from config.kafka_bootstrap_servers: list the brokers' ports in networkPolicy.kafka.ports" }}
{{- end }}
{{- toJson $ports }}
{{- end }}

{{/*
The Redis egress ports, as a JSON list: the port of the Redis URL (6379 when it names none; not
when it comes from secrets.redisUrl, which the chart cannot read) and of each Sentinel. Nodes the
client learns of at run time (Cluster nodes, the Sentinels' master) are expected on the same ports
or in networkPolicy.redis.ports.
*/}}
{{- define "mindvideo-relay.redisPorts" -}}
{{- $derived := list }}
{{- $url := "" }}
{{- if not .Values.secrets.redisUrl.existingSecret }}
{{- $url = include "mindvideo-relay.visibleSetting" (dict "root" . "key" "redis_url") }}
{{- end }}
{{- if and $url (not (hasPrefix "unix:" $url)) }}
{{- $authority := regexReplaceAll "[/?#].*$" (regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://" $url "") "" }}
{{- $address := regexReplaceAll "^.*@" $authority "" }}
{{- $derived = append $derived (int (include "mindvideo-relay.addressPort" (dict "address" $address "default" 6379 "what" "config.redis_url"))) }}
{{- end }}
{{- if eq (toString .Values.config.redis_mode) "sentinel" }}
{{- $sentinels := include "mindvideo-relay.visibleSetting" (dict "root" . "key" "redis_sentinels") }}
{{- $derived = concat $derived (include "mindvideo-relay.listPorts" (dict "list" $sentinels "default" 26379 "what" "config.redis_sentinels") | fromJsonArray) }}
{{- end }}
{{- $ports := include "mindvideo-relay.unionPorts" (dict "listed" .Values.networkPolicy.redis.ports "derived" $derived) | fromJsonArray }}
{{- if not $ports }}
{{- fail "networkPolicy.redis.ports is empty and no Redis port can be read from config (the URL comes from secrets.redisUrl): list the Redis ports in networkPolicy.redis.ports" }}
{{- end }}
{{- toJson $ports }}
{{- end }}
