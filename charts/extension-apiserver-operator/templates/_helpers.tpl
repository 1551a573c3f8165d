{{/* Chart name, possibly overridden. */}}
{{- define "eao.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; used for every object the chart creates. */}}
{{- define "eao.fullname" -}}
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

{{- define "eao.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eao.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eao.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "eao.labels" -}}
helm.sh/chart: {{ include "eao.chart" . }}
{{ include "eao.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "eao.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eao.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image; the tag defaults to the chart's appVersion. */}}
{{- define "eao.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The image of bundled-server Deployments: serverImage, or the operator image (it holds both binaries). */}}
{{- define "eao.serverImage" -}}
{{- .Values.serverImage | default (include "eao.image" .) }}
{{- end }}

{{/* Whether the operator runs with leader election: on when asked, and always with more than one replica. */}}
{{- define "eao.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* The generated RBAC (files/operator-rbac.yaml, written by `cargo run --bin crdgen`). */}}
{{- define "eao.rbac" -}}
{{- $rbac := .Files.Get "files/operator-rbac.yaml" | fromYaml }}
{{- if or (not $rbac) $rbac.Error }}
{{- fail (printf "files/operator-rbac.yaml is missing or invalid: %v" $rbac.Error) }}
{{- end }}
{{- toYaml $rbac }}
{{- end }}
