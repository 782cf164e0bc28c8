{{/*
TLS: the certificate Secrets (kubernetes.io/tls layout: tls.crt, tls.key, ca.crt), given
as existingSecret or issued by cert-manager Certificates (tls.certManager), and where the
pods mount them. Purposes:
  grpc          the store's server certificate (+ ca.crt verifying receivers under mTLS)
  store-client  what a receiver needs to reach the store: ca.crt verifying the store, and
                its client certificate under mTLS
  dicom         the receiver's DICOM TLS server certificate
*/}}
{{- define "seriesflow.tls.mountPath" -}}
{{- printf "/etc/seriesflow/tls/%s" . }}
{{- end }}

{{- define "seriesflow.tls.secretName" -}}
{{- $root := .root }}
{{- $tls := $root.Values.tls }}
{{- $given := "" }}
{{- if eq .purpose "grpc" }}{{ $given = $tls.grpc.store.existingSecret }}
{{- else if eq .purpose "store-client" }}{{ $given = $tls.grpc.receiver.existingSecret }}
{{- else }}{{ $given = $tls.dicom.existingSecret }}
{{- end }}
{{- $generated := dict "grpc" "store-tls" "store-client" "receiver-grpc-tls" "dicom" "dicom-tls" }}
{{- $given | default (printf "%s-%s" (include "seriesflow.fullname" $root) (index $generated .purpose)) }}
{{- end }}

{{/*
Fail unless every enabled TLS channel has its Secret: given, or issued by cert-manager.
*/}}
{{- define "seriesflow.tls.validate" -}}
{{- $tls := .Values.tls }}
{{- $cm := $tls.certManager.enabled }}
{{- if and $tls.grpc.enabled (not $cm) (or (not $tls.grpc.store.existingSecret) (not $tls.grpc.receiver.existingSecret)) }}
{{- fail "seriesflow: tls.grpc.enabled needs tls.grpc.store.existingSecret and tls.grpc.receiver.existingSecret (tls.crt, tls.key, ca.crt), or tls.certManager.enabled=true to have cert-manager issue them" }}
{{- end }}
{{- if and $tls.dicom.enabled (not $cm) (not $tls.dicom.existingSecret) }}
{{- fail "seriesflow: tls.dicom.enabled needs tls.dicom.existingSecret (tls.crt, tls.key), or tls.certManager.enabled=true" }}
{{- end }}
{{- if and $cm (not $tls.certManager.issuerRef.name) }}
{{- fail "seriesflow: tls.certManager.enabled needs tls.certManager.issuerRef.name (an Issuer or ClusterIssuer that fills ca.crt, e.g. a CA issuer)" }}
{{- end }}
{{- end }}

{{/*
A Secret volume of one TLS purpose with the given keys: (dict "root" $ "purpose" "grpc"
"name" "grpc-tls" "keys" (list "tls.crt" "tls.key")).
*/}}
{{- define "seriesflow.tls.volume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ include "seriesflow.tls.secretName" (dict "root" .root "purpose" .purpose) }}
    defaultMode: 0440
    items:
      {{- range .keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}

{{- define "seriesflow.tls.mount" -}}
- name: {{ .name }}
  mountPath: {{ include "seriesflow.tls.mountPath" .purpose }}
  readOnly: true
{{- end }}

{{/*
Keys each purpose's volume carries.
*/}}
{{- define "seriesflow.tls.storeKeys" -}}
{{- if .Values.tls.grpc.mutual }}["tls.crt", "tls.key", "ca.crt"]{{ else }}["tls.crt", "tls.key"]{{ end }}
{{- end }}

{{- define "seriesflow.tls.clientKeys" -}}
{{- if .Values.tls.grpc.mutual }}["ca.crt", "tls.crt", "tls.key"]{{ else }}["ca.crt"]{{ end }}
{{- end }}
