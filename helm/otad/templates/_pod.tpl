{{/* The pod template shared by the StatefulSet (embedded) and the Deployment (external). */}}

{{/* Service ports: the enabled entries of .Values.ports; (list $ true) leaves out metrics (headless Service,
so a ServiceMonitor scrapes each pod once, through the main Service). */}}
{{- define "otad.servicePorts" -}}
{{- $root := index . 0 }}
{{- $noMetrics := index . 1 }}
{{- range $name, $port := $root.Values.ports }}
{{- if and $port.enabled (not (and $noMetrics (eq $name "metrics"))) }}
- name: {{ $name }}
  port: {{ $port.servicePort }}
  targetPort: {{ $name }}
  protocol: {{ $port.protocol }}
  appProtocol: {{ $port.appProtocol }}
{{- end }}
{{- end }}
{{- end }}

{{/* Liveness/readiness/startup probe: native gRPC health on the OTLP port; HTTP on the metrics port with TLS. */}}
{{- define "otad.probe" -}}
{{- $root := index . 0 }}
{{- $probe := index . 1 }}
{{- $path := index . 2 }}
{{- if $root.Values.tls.enabled }}
httpGet:
  path: {{ $path }}
  port: metrics
  {{- if $root.Values.config.metrics_tls }}
  scheme: HTTPS
  {{- end }}
{{- else }}
grpc:
  port: {{ index $root.Values.ports "otlp" "containerPort" }}
  {{- if eq $path "/readyz" }}
  service: otad.readiness
  {{- end }}
{{- end }}
{{- toYaml $probe | nindent 0 }}
{{- end }}

{{- define "otad.podTemplate" -}}
metadata:
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "otad.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "otad.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: otad
      image: {{ include "otad.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve"]
      ports:
        {{- range $name, $port := .Values.ports }}
        {{- if or $port.enabled (ne $name "query") }}{{/* a disabled API listens on 127.0.0.1 only */}}
        - name: {{ $name }}
          containerPort: {{ $port.containerPort }}
          protocol: {{ $port.protocol }}
        {{- end }}
        {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "otad.fullname" . }}
        {{- with .Values.extraEnvFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        - name: HOME
          value: /home/otad
        - name: MPLCONFIGDIR
          value: /tmp/matplotlib
        {{- if and (include "otad.external" .) .Values.externalMilvus.tokenSecret.name }}
        - name: OTAD_MILVUS_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ .Values.externalMilvus.tokenSecret.name }}
              key: {{ .Values.externalMilvus.tokenSecret.key }}
        {{- end }}
        {{- if .Values.tls.enabled }}
        # TLS (and mTLS with a client CA) on both OTLP servers.
        - name: OTAD_TLS_CERT_FILE
          value: /etc/otad/tls/tls.crt
        - name: OTAD_TLS_KEY_FILE
          value: /etc/otad/tls/tls.key
        {{- if .Values.tls.clientCASecretName }}
        - name: OTAD_TLS_CLIENT_CA_FILE
          value: /etc/otad/client-ca/ca.crt
        {{- end }}
        {{- end }}
        {{- if .Values.auth.enabled }}
        # Bearer tokens OTLP clients must send, one per line.
        - name: OTAD_AUTH_TOKEN_FILE
          value: /etc/otad/auth/{{ .Values.auth.tokenSecret.key }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      startupProbe:
        {{- include "otad.probe" (list . .Values.startupProbe "/healthz") | trim | nindent 8 }}
      livenessProbe:
        {{- include "otad.probe" (list . .Values.livenessProbe "/healthz") | trim | nindent 8 }}
      readinessProbe:
        {{- include "otad.probe" (list . .Values.readinessProbe "/readyz") | trim | nindent 8 }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: {{ include "otad.dataDir" . }}
        - name: home
          mountPath: /home/otad
        - name: tmp
          mountPath: /tmp
        {{- if .Values.tls.enabled }}
        - name: tls
          mountPath: /etc/otad/tls
          readOnly: true
        {{- if .Values.tls.clientCASecretName }}
        - name: client-ca
          mountPath: /etc/otad/client-ca
          readOnly: true
        {{- end }}
        {{- end }}
        {{- if .Values.auth.enabled }}
        - name: auth
          mountPath: /etc/otad/auth
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- if or (include "otad.external" .) (not .Values.persistence.enabled) }}
    - name: data
      {{- with .Values.persistence.emptyDirSizeLimit }}
      emptyDir:
        sizeLimit: {{ . }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
    - name: home
      emptyDir:
        sizeLimit: 64Mi
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.secretName }}
    {{- if .Values.tls.clientCASecretName }}
    - name: client-ca
      secret:
        secretName: {{ .Values.tls.clientCASecretName }}
    {{- end }}
    {{- end }}
    {{- if .Values.auth.enabled }}
    - name: auth
      secret:
        secretName: {{ .Values.auth.tokenSecret.name }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
