{{/*
The Ray Serve config (serveConfigV2), in the shape of deploy/serve_config.yaml: one application
built by service.app:build_app, whose args validate with service.app.AppArgs, and one deployment
override per model (autoscaling, graceful shutdown). api_keys_file and rate_limit_per_minute only
when security.* sets them (the default render equals deploy/serve_config.yaml).
*/}}
{{- define "mt-serve.serveConfig" -}}
{{- $s := .Values.serve }}
{{- $models := list }}
{{- $deployments := list }}
{{- range $s.models }}
{{- $m := dict "name" .name "path" .path "pairs" .pairs "num_gpus" .numGpus "num_cpus" .numCpus
      "max_ongoing_requests" .maxOngoingRequests "max_queued_requests" .maxQueuedRequests }}
{{- with .dtype }}{{ $_ := set $m "dtype" . }}{{ end }}
{{- with .threads }}{{ $_ := set $m "threads" . }}{{ end }}
{{- $d := dict "name" (printf "model-%s" .name)
      "graceful_shutdown_timeout_s" $s.gracefulShutdownTimeoutS
      "graceful_shutdown_wait_loop_s" $s.gracefulShutdownWaitLoopS }}
{{- if .autoscaling.enabled }}
{{- $_ := set $m "num_replicas" "auto" }}
{{- $_ := set $d "autoscaling_config" (dict
      "min_replicas" .autoscaling.minReplicas
      "max_replicas" .autoscaling.maxReplicas
      "target_ongoing_requests" .autoscaling.targetOngoingRequests) }}
{{- else }}
{{- $_ := set $m "num_replicas" .replicas }}
{{- end }}
{{- $models = append $models $m }}
{{- $deployments = append $deployments $d }}
{{- end }}
{{- $batching := dict
      "mode" $s.batching.mode
      "max_batch_tokens" $s.batching.maxBatchTokens
      "batch_wait_timeout_s" $s.batching.batchWaitTimeoutS
      "max_batch_sentences" $s.batching.maxBatchSentences
      "slots" $s.batching.slots
      "max_encode_tokens" $s.batching.maxEncodeTokens }}
{{- $args := dict "ingress_replicas" $s.ingressReplicas "ingress_max_ongoing_requests" $s.ingressMaxOngoingRequests
      "ingress_max_queued_requests" $s.ingressMaxQueuedRequests
      "batching" $batching "models" $models }}
{{- /* Only where the keys file is mounted (a Secret): the keys themselves never reach the args. */}}
{{- with .Values.security.apiKeys.existingSecret }}
{{- $_ := set $args "api_keys_file" (include "mt-serve.apiKeysFile" $) }}
{{- end }}
{{- if not (kindIs "invalid" .Values.security.rateLimitPerMinute) }}
{{- $_ := set $args "rate_limit_per_minute" .Values.security.rateLimitPerMinute }}
{{- end }}
{{- $app := dict "name" "mt" "route_prefix" "/" "import_path" "service.app:build_app"
      "args" $args "deployments" $deployments }}
{{- $config := dict
      "proxy_location" "EveryNode"
      "http_options" (dict "host" "0.0.0.0" "port" 8000 "request_timeout_s" $s.requestTimeoutS
                           "keep_alive_timeout_s" $s.keepAliveTimeoutS)
      "grpc_options" (dict "port" 9000)
      "logging_config" (dict "encoding" "JSON" "log_level" $s.logLevel "enable_access_log" false)
      "applications" (list $app) }}
{{- toYaml $config }}
{{- end }}
