{{/* Names and labels. */}}
{{- define "mt-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* KubeRay appends suffixes to the RayService name (cluster, services): keep it short. */}}
{{- define "mt-serve.fullname" -}}
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

{{- define "mt-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mt-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels of the Ray pods, used by every selector. KubeRay sets app.kubernetes.io/name=kuberay on
the pods it creates, so the selectors use part-of and instance instead.
*/}}
{{- define "mt-serve.podSelectorLabels" -}}
app.kubernetes.io/part-of: {{ include "mt-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mt-serve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* requests = limits (Guaranteed QoS); GPUs in both when asked. Call with (list resources gpus). */}}
{{- define "mt-serve.resources" -}}
{{- $res := index . 0 }}
{{- $gpus := index . 1 }}
{{- range $kind := list "requests" "limits" }}
{{ $kind }}:
  cpu: {{ $res.cpu | quote }}
  memory: {{ $res.memory | quote }}
  {{- with (index $res "ephemeral-storage") }}
  ephemeral-storage: {{ . | quote }}
  {{- end }}
  {{- if gt (int $gpus) 0 }}
  nvidia.com/gpu: {{ int $gpus | quote }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "mt-serve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
fsGroup: 100
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "mt-serve.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .Values.pod.readOnlyRootFilesystem }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment of the Ray containers: caches under the writable /tmp, then the user's env. */}}
{{- define "mt-serve.env" -}}
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: TORCHINDUCTOR_CACHE_DIR
  value: /tmp/cache/torchinductor
- name: TRITON_CACHE_DIR
  value: /tmp/cache/triton
{{- with .Values.pod.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* API keys: the Secret security.apiKeys.existingSecret, mounted read-only here in every Ray pod. */}}
{{- define "mt-serve.apiKeysDir" -}}
/etc/mt-serve/api-keys
{{- end }}

{{/* The keys file the service reads (args.api_keys_file): <mount>/<key>. */}}
{{- define "mt-serve.apiKeysFile" -}}
{{- printf "%s/%s" (include "mt-serve.apiKeysDir" .) .Values.security.apiKeys.key }}
{{- end }}

{{/* The pod spec parts shared by head and worker groups. */}}
{{- define "mt-serve.podCommon" -}}
terminationGracePeriodSeconds: {{ .Values.pod.terminationGracePeriodSeconds }}
securityContext:
  {{- include "mt-serve.podSecurityContext" . | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.pod.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.pod.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.pod.tmpSizeLimit }}
  {{- with .Values.security.apiKeys.existingSecret }}
  - name: api-keys
    secret:
      secretName: {{ . | quote }}
      items:
        - key: {{ $.Values.security.apiKeys.key | quote }}
          path: {{ $.Values.security.apiKeys.key | quote }}
      defaultMode: 0440         # owner root, group fsGroup (100): readable by uid 1000 only through its group
  {{- end }}
{{- end }}

{{/* Container parts shared by head and workers. */}}
{{- define "mt-serve.containerCommon" -}}
image: {{ include "mt-serve.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- include "mt-serve.containerSecurityContext" . | nindent 2 }}
env:
  {{- include "mt-serve.env" . | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if .Values.security.apiKeys.existingSecret }}
  - name: api-keys
    mountPath: {{ include "mt-serve.apiKeysDir" . }}
    readOnly: true
  {{- end }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ .Values.pod.preStopSleepSeconds }}"]
{{- end }}

{{/* rayStartParams: chart defaults overridden by the user's, all as strings. Call with (list defaults user). */}}
{{- define "mt-serve.rayStartParams" -}}
{{- $params := merge (deepCopy (default (dict) (index . 1))) (index . 0) }}
{{- range $k := keys $params | sortAlpha }}
{{ $k }}: {{ index $params $k | toString | quote }}
{{- end }}
{{- end }}

{{/* Checks the schema cannot express. Included by the RayService template. */}}
{{- define "mt-serve.validate" -}}
{{- $need := addf .Values.pod.preStopSleepSeconds .Values.serve.gracefulShutdownTimeoutS 5 }}
{{- if lt (float64 .Values.pod.terminationGracePeriodSeconds) $need }}
{{- fail (printf "pod.terminationGracePeriodSeconds must be >= pod.preStopSleepSeconds + serve.gracefulShutdownTimeoutS + 5 = %v. Given: %v" $need .Values.pod.terminationGracePeriodSeconds) }}
{{- end }}
{{- $gpuGroups := 0 }}
{{- range .Values.workerGroups }}{{ if gt (int .gpus) 0 }}{{ $gpuGroups = add1 $gpuGroups }}{{ end }}{{ end }}
{{- $seen := dict }}
{{- range .Values.serve.models }}
{{- if and (gt (float64 .numGpus) 0.0) (eq (int $gpuGroups) 0) }}
{{- fail (printf "serve.models[%s].numGpus is %v but no workerGroups entry has gpus > 0" .name .numGpus) }}
{{- end }}
{{- if hasKey $seen .name }}
{{- fail (printf "serve.models: the name %s is used twice" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- if and .autoscaling.enabled (gt (int .autoscaling.minReplicas) (int .autoscaling.maxReplicas)) }}
{{- fail (printf "serve.models[%s].autoscaling: minReplicas (%v) must be <= maxReplicas (%v)" .name .autoscaling.minReplicas .autoscaling.maxReplicas) }}
{{- end }}
{{- end }}
{{- $envKeys := false }}
{{- range .Values.pod.env }}{{ if has .name (list "MT_API_KEYS" "MT_API_KEYS_FILE") }}{{ $envKeys = true }}{{ end }}{{ end }}
{{- $rate := .Values.security.rateLimitPerMinute }}
{{- if and (not (kindIs "invalid" $rate)) (gt (float64 $rate) 0.0) (not .Values.security.apiKeys.existingSecret) (not $envKeys) }}
{{- fail (printf "security.rateLimitPerMinute (%v) limits each API key, but no keys are configured: set security.apiKeys.existingSecret" $rate) }}
{{- end }}
{{- range .Values.workerGroups }}
{{- if or (gt (int .minReplicas) (int .replicas)) (gt (int .replicas) (int .maxReplicas)) }}
{{- fail (printf "workerGroups[%s]: need minReplicas <= replicas <= maxReplicas. Given: %v, %v, %v" .name .minReplicas .replicas .maxReplicas) }}
{{- end }}
{{- end }}
{{- end }}
