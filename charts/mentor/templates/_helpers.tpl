{{/* Chart name, overridable. */}}
{{- define "mentor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; "mentor" for a release named mentor. */}}
{{- define "mentor.fullname" -}}
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

{{- define "mentor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: mentor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component (operator, minio, mlflow). */}}
{{- define "mentor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mentor.name" .root }}-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{- define "mentor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "mentor.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's MENTOR_* environment: chart-derived defaults, then .Values.settings. */}}
{{- define "mentor.settings" -}}
{{- $fullname := include "mentor.fullname" . }}
{{- $data := dict "MENTOR_S3_CREDENTIALS_SECRET" .Values.s3Credentials.secretName }}
{{- if .Values.minio.enabled }}
{{- $_ := set $data "MENTOR_S3_ENDPOINT" (printf "http://%s-minio.%s.svc:9000" $fullname .Release.Namespace) }}
{{- end }}
{{- if .Values.mlflow.enabled }}
{{- $_ := set $data "MENTOR_MLFLOW_TRACKING_URI" (printf "http://%s-mlflow.%s.svc:5000" $fullname .Release.Namespace) }}
{{- end }}
{{- $_ := set $data "MENTOR_METRICS_PORT" (ternary (toString .Values.metrics.port) "0" .Values.metrics.enabled) }}
{{- range $key, $value := .Values.settings }}
{{- if not (kindIs "invalid" $value) }}
{{- $_ := set $data $key (toString $value) }}
{{- end }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/* kopf peering name: MENTOR_PEERING, else the operator's default. */}}
{{- define "mentor.peeringName" -}}
{{- default "mentor" (get .Values.settings "MENTOR_PEERING") }}
{{- end }}
