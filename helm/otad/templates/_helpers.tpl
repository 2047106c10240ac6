{{/* Names, labels and the few derived values every template shares. */}}

{{/* The chart name, cut to 63 characters (DNS label limit). */}}
{{- define "otad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: <release>-<chart>, or <release> when it already contains the chart name. */}}
{{- define "otad.fullname" -}}
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

{{/* chart label value: name-version. */}}
{{- define "otad.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels for the pod selector: stable across upgrades. */}}
{{- define "otad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels for every resource. */}}
{{- define "otad.labels" -}}
helm.sh/chart: {{ include "otad.chart" . }}
{{ include "otad.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: anomaly-detector
{{- end }}

{{- define "otad.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "otad.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest. */}}
{{- define "otad.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* true when otad uses an external Milvus server (Deployment topology). */}}
{{- define "otad.external" -}}
{{- if eq .Values.milvus.mode "external" }}true{{ end }}
{{- end }}

{{/* Where OTAD_DATA_DIR is mounted. The Dockerfile declares the same path as a VOLUME. */}}
{{- define "otad.dataDir" -}}/var/lib/otad{{- end }}

{{/*
A value as an environment variable string. Helm reads YAML numbers as float64, and a plain `toString` would
turn 1000000 into "1e+06", which pydantic rejects for an int setting; whole numbers are printed as integers.
*/}}
{{- define "otad.envValue" -}}
{{- $v := . }}
{{- if kindIs "float64" $v }}
{{- if eq $v (float64 (int64 $v)) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if kindIs "invalid" $v }}
{{- else }}{{ $v }}{{ end }}
{{- end }}

{{/*
Invalid combinations stop rendering with one [ERROR] line naming the values to change. Called from NOTES.txt,
which `helm install`, `helm upgrade` and `helm template` (even with --show-only) always render.
*/}}
{{- define "otad.validate" -}}
{{- $external := eq .Values.milvus.mode "external" }}
{{- if and $external (not .Values.externalMilvus.uri) }}
{{- fail "[ERROR] milvus.mode=external needs externalMilvus.uri (e.g. http://milvus.observability.svc:19530); see README.md \"External Milvus\"" }}
{{- end }}
{{- if and (not $external) .Values.externalMilvus.uri }}
{{- fail "[ERROR] externalMilvus.uri is set but milvus.mode is embedded; set milvus.mode=external to use it, or clear externalMilvus.uri" }}
{{- end }}
{{- if and (not $external) (gt (int .Values.replicaCount) 1) }}
{{- fail "[ERROR] replicaCount > 1 needs an external Milvus (milvus.mode=external and externalMilvus.uri): embedded Milvus Lite allows one process per data directory" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not $external) }}
{{- fail "[ERROR] autoscaling.enabled needs an external Milvus (milvus.mode=external and externalMilvus.uri): the embedded topology is a single replica" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "[ERROR] autoscaling.minReplicas (%v) must be <= autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "[ERROR] autoscaling.enabled needs autoscaling.targetCPUUtilizationPercentage or autoscaling.targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not $external) }}
{{- fail "[ERROR] podDisruptionBudget.enabled needs milvus.mode=external: the single embedded replica cannot stay available during a drain, so the budget would block it" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (eq (toString .Values.podDisruptionBudget.minAvailable) "<nil>") (eq (toString .Values.podDisruptionBudget.maxUnavailable) "<nil>") }}
{{- fail "[ERROR] podDisruptionBudget.enabled needs podDisruptionBudget.minAvailable or podDisruptionBudget.maxUnavailable" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (ne (toString .Values.podDisruptionBudget.minAvailable) "<nil>") (ne (toString .Values.podDisruptionBudget.maxUnavailable) "<nil>") }}
{{- fail "[ERROR] set only one of podDisruptionBudget.minAvailable and podDisruptionBudget.maxUnavailable (set the other to null)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "[ERROR] tls.enabled needs tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key)" }}
{{- end }}
{{- if and (not .Values.tls.enabled) .Values.tls.clientCASecretName }}
{{- fail "[ERROR] tls.clientCASecretName needs tls.enabled=true" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.tokenSecret.name) }}
{{- fail "[ERROR] auth.enabled needs auth.tokenSecret.name (an existing Secret with the bearer token)" }}
{{- end }}
{{- end }}
