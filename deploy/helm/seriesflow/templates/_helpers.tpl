{{/*
Expand the name of the chart.
*/}}
{{- define "seriesflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name. Truncated to 40 characters so that component
names ("-receiver-headless") stay within a 63-character DNS label and the receiver
StatefulSet's name within 52 (its controller-revision-hash label adds 11).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "seriesflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "seriesflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "seriesflow.labels" -}}
helm.sh/chart: {{ include "seriesflow.chart" . }}
{{ include "seriesflow.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: seriesflow
{{- end }}

{{/*
Selector labels
*/}}
{{- define "seriesflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "seriesflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component: (dict "root" $ "component" "store").
*/}}
{{- define "seriesflow.componentLabels" -}}
{{ include "seriesflow.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "seriesflow.componentSelectorLabels" -}}
{{ include "seriesflow.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "seriesflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "seriesflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "seriesflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "seriesflow.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "seriesflow.fullname" .) }}
{{- end }}

{{- define "seriesflow.store.fullname" -}}
{{- printf "%s-store" (include "seriesflow.fullname" .) }}
{{- end }}

{{- define "seriesflow.receiver.fullname" -}}
{{- printf "%s-receiver" (include "seriesflow.fullname" .) }}
{{- end }}

{{/*
Exactly one database source must be configured; fail early with a message saying how.
*/}}
{{- define "seriesflow.validateDatabase" -}}
{{- $sources := 0 }}
{{- if .Values.postgresql.enabled }}{{ $sources = add1 $sources }}{{ end }}
{{- if .Values.externalDatabase.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if .Values.externalDatabase.existingSecret }}{{ $sources = add1 $sources }}{{ end }}
{{- if ne $sources 1 }}
{{- fail "seriesflow: configure exactly one database: postgresql.enabled=true (bundled, for trials), externalDatabase.url, or externalDatabase.existingSecret (a Secret holding the URL)" }}
{{- end }}
{{- if and (eq .Values.migrations.mode "hook") (not .Values.externalDatabase.existingSecret) }}
{{- fail "seriesflow: migrations.mode=hook runs before the release's own objects exist, so it needs externalDatabase.existingSecret; use migrations.mode=initContainer with postgresql.enabled or externalDatabase.url" }}
{{- end }}
{{- end }}

{{/*
The Secret and key holding SERIESFLOW_DATABASE_URL.
*/}}
{{- define "seriesflow.databaseSecretName" -}}
{{- if .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "seriesflow.fullname" .) }}
{{- end }}
{{- end }}

{{- define "seriesflow.databaseSecretKey" -}}
{{- if .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.existingSecretKey }}
{{- else }}
{{- "database-url" }}
{{- end }}
{{- end }}

{{/*
The bundled PostgreSQL password: given, else the one already stored in the release's Secret
(so upgrades keep it), else a new random one.
*/}}
{{- define "seriesflow.postgresql.password" -}}
{{- if .Values.postgresql.auth.password }}
{{- .Values.postgresql.auth.password }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "seriesflow.databaseSecretName" .) }}
{{- if and $existing $existing.data (index $existing.data "postgres-password") }}
{{- index $existing.data "postgres-password" | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Environment shared by every seriesflow container that talks to the database.
*/}}
{{- define "seriesflow.databaseEnv" -}}
- name: SERIESFLOW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "seriesflow.databaseSecretName" . }}
      key: {{ include "seriesflow.databaseSecretKey" . }}
{{- end }}

{{/*
Extra settings map -> SERIESFLOW_<NAME>: "value" lines.
*/}}
{{- define "seriesflow.settingsData" -}}
{{- range $name, $value := . }}
{{ printf "SERIESFLOW_%s" (upper $name) }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/*
gRPC API authentication: the Secret holding the token files (keys write-tokens and
read-tokens, one token a line) and where the pods mount it.
*/}}
{{- define "seriesflow.grpcAuthSecretName" -}}
{{- .Values.grpcAuth.existingSecret | default (printf "%s-grpc-auth" (include "seriesflow.fullname" .)) }}
{{- end }}

{{- define "seriesflow.grpcAuthMountPath" -}}
/etc/seriesflow/grpc-auth
{{- end }}

{{/*
A token of the chart's Secret: the one already stored (so upgrades keep it), else new.
(dict "root" $ "key" "write-tokens")
*/}}
{{- define "seriesflow.grpcAuthToken" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace (include "seriesflow.grpcAuthSecretName" .root) }}
{{- if and $existing $existing.data (index $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
