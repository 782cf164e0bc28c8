{{/*
The SERIESFLOW_* settings of each service (the data of its ConfigMap). Kept apart from
the ConfigMap so its checksum covers the settings only, not labels. chartConfig is what
the chart derives from its own values; <component>.settings adds to it and may not
repeat one of those keys (a ConfigMap with a key twice is ambiguous).
*/}}
{{- define "seriesflow.store.chartConfig" -}}
SERIESFLOW_LISTEN_HOST: "0.0.0.0"
SERIESFLOW_GRPC_PORT: {{ .Values.store.grpcPort | quote }}
SERIESFLOW_STORE_METRICS_PORT: {{ .Values.store.metricsPort | quote }}
SERIESFLOW_STORE_HTTP_PORT: {{ .Values.store.httpPort | quote }}
SERIESFLOW_LOG_LEVEL: {{ .Values.logLevel | quote }}
{{- if .Values.grpcAuth.enabled }}
SERIESFLOW_GRPC_AUTH: token
SERIESFLOW_GRPC_WRITE_TOKENS_FILE: {{ printf "%s/write-tokens" (include "seriesflow.grpcAuthMountPath" .) | quote }}
SERIESFLOW_GRPC_READ_TOKENS_FILE: {{ printf "%s/read-tokens" (include "seriesflow.grpcAuthMountPath" .) | quote }}
{{- else }}
SERIESFLOW_GRPC_AUTH: none
{{- end }}
{{- if .Values.tls.grpc.enabled }}
{{- $dir := include "seriesflow.tls.mountPath" "grpc" }}
SERIESFLOW_GRPC_TLS_CERT: {{ printf "%s/tls.crt" $dir | quote }}
SERIESFLOW_GRPC_TLS_KEY: {{ printf "%s/tls.key" $dir | quote }}
{{- if .Values.tls.grpc.mutual }}
SERIESFLOW_GRPC_TLS_CLIENT_CA: {{ printf "%s/ca.crt" $dir | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "seriesflow.store.configData" -}}
{{- $owned := include "seriesflow.store.chartConfig" . }}
{{- $owned }}
{{- include "seriesflow.settingsData" (dict "settings" .Values.store.settings "owned" $owned "path" "store.settings") }}
{{- end }}

{{- define "seriesflow.receiver.chartConfig" -}}
SERIESFLOW_LISTEN_HOST: "0.0.0.0"
SERIESFLOW_AE_TITLE: {{ .Values.receiver.aeTitle | quote }}
SERIESFLOW_DICOM_PORT: {{ .Values.receiver.dicomPort | quote }}
SERIESFLOW_RECEIVER_METRICS_PORT: {{ .Values.receiver.metricsPort | quote }}
SERIESFLOW_STOW_PORT: {{ .Values.receiver.stowPort | quote }}
SERIESFLOW_DATA_DIR: /var/lib/seriesflow
SERIESFLOW_STORE_ADDRESS: {{ printf "%s:%d" (include "seriesflow.store.fullname" .) (int .Values.store.grpcPort) | quote }}
SERIESFLOW_SERIES_IDLE_TIMEOUT: {{ .Values.receiver.seriesIdleTimeout | quote }}
SERIESFLOW_LOG_LEVEL: {{ .Values.logLevel | quote }}
{{- if .Values.grpcAuth.enabled }}
SERIESFLOW_STORE_TOKEN_FILE: {{ printf "%s/write-tokens" (include "seriesflow.grpcAuthMountPath" .) | quote }}
# C-FIND is answered through the store's query API, which needs the read scope.
SERIESFLOW_STORE_READ_TOKEN_FILE: {{ printf "%s/read-tokens" (include "seriesflow.grpcAuthMountPath" .) | quote }}
{{- end }}
{{- if .Values.tls.grpc.enabled }}
{{- $dir := include "seriesflow.tls.mountPath" "store-client" }}
SERIESFLOW_STORE_TLS_CA: {{ printf "%s/ca.crt" $dir | quote }}
{{- if .Values.tls.grpc.mutual }}
SERIESFLOW_STORE_TLS_CERT: {{ printf "%s/tls.crt" $dir | quote }}
SERIESFLOW_STORE_TLS_KEY: {{ printf "%s/tls.key" $dir | quote }}
{{- end }}
{{- end }}
{{- if .Values.tls.dicom.enabled }}
{{- $dir := include "seriesflow.tls.mountPath" "dicom" }}
SERIESFLOW_DICOM_TLS_CERT: {{ printf "%s/tls.crt" $dir | quote }}
SERIESFLOW_DICOM_TLS_KEY: {{ printf "%s/tls.key" $dir | quote }}
{{- end }}
{{- end }}

{{- define "seriesflow.receiver.configData" -}}
{{- $owned := include "seriesflow.receiver.chartConfig" . }}
{{- $owned }}
{{- include "seriesflow.settingsData" (dict "settings" .Values.receiver.settings "owned" $owned "path" "receiver.settings") }}
{{- end }}
