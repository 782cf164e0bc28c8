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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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

{{/*
An image reference [registry/]repository:tag, or [registry/]repository@digest when a
digest pins it: (dict "image" .Values.image "global" .Values.global "tag" default-tag).
image.registry, else global.imageRegistry, prefixes the repository.
*/}}
{{- define "seriesflow.imageRef" -}}
{{- $global := .global | default dict }}
{{- $registry := .image.registry | default $global.imageRegistry }}
{{- $repository := .image.repository }}
{{- if $registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.image.tag | default .tag | toString) }}
{{- end }}
{{- end }}

{{- define "seriesflow.image" -}}
{{- include "seriesflow.imageRef" (dict "image" .Values.image "global" .Values.global "tag" .Chart.AppVersion) }}
{{- end }}

{{- define "seriesflow.postgresql.image" -}}
{{- include "seriesflow.imageRef" (dict "image" .Values.postgresql.image "global" .Values.global "tag" "16-bookworm") }}
{{- end }}

{{/*
priorityClassName of a component's pods: its own, else the chart-wide one.
(dict "root" $ "component" .Values.store)
*/}}
{{- define "seriesflow.priorityClassName" -}}
{{- $name := .component.priorityClassName | default .root.Values.priorityClassName }}
{{- if $name }}priorityClassName: {{ $name | quote }}{{ end }}
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
Which database the release uses:
  bundled    postgresql.enabled
  parts      externalDatabase.host (+ port, user, database, sslmode; the password from
             existingSecret/existingSecretPasswordKey or externalDatabase.password)
  url        externalDatabase.url (the chart keeps it in a Secret)
  urlSecret  externalDatabase.existingSecret holding a whole URL under existingSecretKey
*/}}
{{- define "seriesflow.database.mode" -}}
{{- $db := .Values.externalDatabase }}
{{- if .Values.postgresql.enabled }}bundled
{{- else if $db.host }}parts
{{- else if $db.url }}url
{{- else if $db.existingSecret }}urlSecret
{{- end }}
{{- end }}

{{/*
Exactly one database source must be configured; fail early with a message saying how.
*/}}
{{- define "seriesflow.validateDatabase" -}}
{{- $db := .Values.externalDatabase }}
{{- $sources := 0 }}
{{- if .Values.postgresql.enabled }}{{ $sources = add1 $sources }}{{ end }}
{{- if $db.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if $db.host }}{{ $sources = add1 $sources }}{{ end }}
{{- if and $db.existingSecret (not $db.host) }}{{ $sources = add1 $sources }}{{ end }}
{{- if ne $sources 1 }}
{{- fail "seriesflow: configure exactly one database: postgresql.enabled=true (bundled, for trials), externalDatabase.url, externalDatabase.host (with existingSecret + existingSecretPasswordKey, or password), or externalDatabase.existingSecret alone (a Secret holding the URL)" }}
{{- end }}
{{- if and $db.host (not $db.existingSecret) (not $db.password) }}
{{- fail "seriesflow: externalDatabase.host needs a password: externalDatabase.existingSecret (key externalDatabase.existingSecretPasswordKey) or externalDatabase.password" }}
{{- end }}
{{- if and $db.host $db.existingSecret $db.password }}
{{- fail "seriesflow: set externalDatabase.existingSecret or externalDatabase.password, not both" }}
{{- end }}
{{- if and .Values.postgresql.enabled .Values.postgresql.auth.existingSecret .Values.postgresql.auth.password }}
{{- fail "seriesflow: set postgresql.auth.existingSecret or postgresql.auth.password, not both" }}
{{- end }}
{{- if and (eq .Values.migrations.mode "hook") (not $db.existingSecret) }}
{{- fail "seriesflow: migrations.mode=hook runs before the release's own objects exist, so it needs externalDatabase.existingSecret (a URL, or the password beside externalDatabase.host); use migrations.mode=initContainer with postgresql.enabled or externalDatabase.url" }}
{{- end }}
{{- end }}

{{/*
The Secret the chart renders for the database (<fullname>-database), when it renders one.
*/}}
{{- define "seriesflow.databaseSecretName" -}}
{{- printf "%s-database" (include "seriesflow.fullname" .) }}
{{- end }}

{{- define "seriesflow.database.rendersSecret" -}}
{{- $mode := include "seriesflow.database.mode" . }}
{{- if or (and (eq $mode "bundled") (not .Values.postgresql.auth.existingSecret)) (eq $mode "url") (and (eq $mode "parts") .Values.externalDatabase.password) }}true{{ end }}
{{- end }}

{{/*
The bundled PostgreSQL password when the chart manages it: postgresql.auth.password, else
the one a cluster already holds in the release's Secret (releases installed when the
chart generated random passwords keep theirs), else one derived from the namespace,
release and user. The derived one is the same on every render, so `helm template`, Argo
CD and Flux render the same Secret each time (a random one would change the password the
stores use, but not the one PostgreSQL was initialized with). It is not a secret from
anyone who knows the release: it is for trials; set postgresql.auth.password or
postgresql.auth.existingSecret for anything else (README, "The bundled PostgreSQL").
*/}}
{{- define "seriesflow.postgresql.password" -}}
{{- if .Values.postgresql.auth.password }}
{{- .Values.postgresql.auth.password }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "seriesflow.databaseSecretName" .) }}
{{- if and $existing $existing.data (index $existing.data "postgres-password") }}
{{- index $existing.data "postgres-password" | b64dec }}
{{- else }}
{{- printf "seriesflow-postgresql/%s/%s/%s" .Release.Namespace (include "seriesflow.fullname" .) .Values.postgresql.auth.username | sha256sum | trunc 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The data of the chart's database Secret (empty when it renders none). Also hashed into
the store's checksum/secret annotation, so pods roll exactly when it changes.
*/}}
{{- define "seriesflow.database.secretData" -}}
{{- $mode := include "seriesflow.database.mode" . }}
{{- if include "seriesflow.database.rendersSecret" . }}
{{- if eq $mode "bundled" }}
{{- $password := include "seriesflow.postgresql.password" . }}
{{- $auth := .Values.postgresql.auth }}
{{- $url := printf "postgresql://%s:%s@%s:5432/%s" (urlquery $auth.username) (urlquery $password) (include "seriesflow.postgresql.fullname" .) (urlquery $auth.database) }}
database-url: {{ $url | b64enc | quote }}
postgres-password: {{ $password | b64enc | quote }}
{{- else if eq $mode "url" }}
database-url: {{ .Values.externalDatabase.url | b64enc | quote }}
{{- else }}
password: {{ .Values.externalDatabase.password | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A libpq URL without the password (libpq takes it from PGPASSWORD): (dict "user" "host"
"port" "database" "sslmode").
*/}}
{{- define "seriesflow.database.partsUrl" -}}
{{- $host := .host }}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end }}
{{- printf "postgresql://%s@%s:%d/%s" (urlquery .user) $host (int .port) (urlquery .database) }}
{{- with .sslmode }}{{ printf "?sslmode=%s" . }}{{ end }}
{{- end }}

{{/*
Environment shared by every seriesflow container that talks to the database: the URL
(from a Secret when it holds the password) and, where the password is kept apart from
the URL, PGPASSWORD, which libpq reads when the URL carries none (no escaping needed).
*/}}
{{- define "seriesflow.databaseEnv" -}}
{{- $mode := include "seriesflow.database.mode" . }}
{{- $db := .Values.externalDatabase }}
{{- $auth := .Values.postgresql.auth }}
{{- if and (eq $mode "bundled") $auth.existingSecret }}
- name: SERIESFLOW_DATABASE_URL
  value: {{ include "seriesflow.database.partsUrl" (dict "user" $auth.username "host" (include "seriesflow.postgresql.fullname" .) "port" 5432 "database" $auth.database "sslmode" "") | quote }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.secretKeys.userPasswordKey }}
{{- else if eq $mode "parts" }}
- name: SERIESFLOW_DATABASE_URL
  value: {{ include "seriesflow.database.partsUrl" (dict "user" $db.user "host" $db.host "port" $db.port "database" $db.database "sslmode" $db.sslmode) | quote }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      {{- if $db.existingSecret }}
      name: {{ $db.existingSecret }}
      key: {{ $db.existingSecretPasswordKey }}
      {{- else }}
      name: {{ include "seriesflow.databaseSecretName" . }}
      key: password
      {{- end }}
{{- else }}
- name: SERIESFLOW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if eq $mode "urlSecret" }}
      name: {{ $db.existingSecret }}
      key: {{ $db.existingSecretKey }}
      {{- else }}
      name: {{ include "seriesflow.databaseSecretName" . }}
      key: database-url
      {{- end }}
{{- end }}
{{- end }}

{{/*
Pod annotations that roll a component's pods exactly when its own configuration changes:
  checksum/config  the data of its ConfigMap (not labels, not other components' settings);
                   for the hook Job, the settings it is given inline
  checksum/secret  its database: the data of the chart's database Secret and the
                   database environment (URL or parts, and which Secret keys hold them)
The receiver has no database; the migrate init container is part of the store's pod.
Secrets the chart does not render (existingSecret, cert-manager's, the gRPC token Secret,
whose files the services re-read) are not hashed: see the README.
(dict "root" $ "component" "store"|"receiver"|"migrate")
*/}}
{{- define "seriesflow.checksums" -}}
{{- $root := .root }}
{{- $database := printf "%s\n---\n%s" (include "seriesflow.database.secretData" $root) (include "seriesflow.databaseEnv" $root) }}
{{- if eq .component "receiver" }}
checksum/config: {{ include "seriesflow.receiver.configData" $root | sha256sum }}
{{- else if eq .component "store" }}
checksum/config: {{ include "seriesflow.store.configData" $root | sha256sum }}
checksum/secret: {{ $database | sha256sum }}
{{- else }}
checksum/config: {{ $root.Values.logLevel | sha256sum }}
checksum/secret: {{ $database | sha256sum }}
{{- end }}
{{- end }}

{{/*
Extra settings map -> SERIESFLOW_<NAME>: "value" lines.
*/}}
{{- define "seriesflow.settingsData" -}}
{{- $owned := fromYaml .owned }}
{{- $path := .path }}
{{- range $name, $value := .settings }}
{{- $key := printf "SERIESFLOW_%s" (upper $name) }}
{{- if hasKey $owned $key }}
{{- fail (printf "%s.%s sets %s, which the chart sets from its own values (ports, TLS, grpcAuth, logLevel, ...): set that value instead, or override it with the component's extraEnv" $path $name $key) }}
{{- end }}
{{ $key }}: {{ $value | toString | quote }}
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

{{/*
Labels of a ServiceMonitor/PrometheusRule beyond the chart's: release: <metrics.release>,
which kube-prometheus-stack's default selectors require (serviceMonitorSelector and
ruleSelector match its own Helm release name), then the object's own labels, which win.
(dict "root" $ "labels" .Values.metrics.serviceMonitor.labels)
*/}}
{{- define "seriesflow.prometheusLabels" -}}
{{- $labels := dict }}
{{- with .root.Values.metrics.release }}{{ $_ := set $labels "release" . }}{{ end }}
{{- $labels = merge (deepCopy (.labels | default dict)) $labels }}
{{- with $labels }}{{ toYaml . }}{{ end }}
{{- end }}
