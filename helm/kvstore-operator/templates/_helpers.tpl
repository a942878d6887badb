{{/* Names and labels shared by every template of the chart. */}}

{{- define "kvstore-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name alone when it already holds the chart name. */}}
{{- define "kvstore-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kvstore-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvstore-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The selector labels as `key=value,...` (the operator's KV_OPERATOR_POD_LABELS). */}}
{{- define "kvstore-operator.selectorLabelList" -}}
app.kubernetes.io/name={{ include "kvstore-operator.name" . }},app.kubernetes.io/instance={{ .Release.Name }}
{{- end -}}

{{- define "kvstore-operator.labels" -}}
{{ include "kvstore-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kvstore
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kvstore-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kvstore-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kvstore-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kvstore-operator.serverImage" -}}
{{- default (printf "kvstore/kv-server:%s" .Chart.AppVersion) .Values.clusterImages.server -}}
{{- end -}}

{{- define "kvstore-operator.gatewayImage" -}}
{{- default (printf "kvstore/kv-gateway:%s" .Chart.AppVersion) .Values.clusterImages.gateway -}}
{{- end -}}

{{/* The Service in front of /metrics exists when asked for, or when a ServiceMonitor needs it. */}}
{{- define "kvstore-operator.metricsService" -}}
{{- if or .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled -}}true{{- end -}}
{{- end -}}

{{- /*
Exactly what kv-operator calls (scripts/helm_check.py holds this list to the same table):
- kvclusters: list + watch (the Controller; the start-up CRD check lists them), and
  patch on kvclusters/status (server-side apply of the status).
- the children, written by server-side apply, which needs create as well as patch when the
  object does not exist yet (operator/src/reconcile/apply.rs):
  statefulsets (also get: the reconciler reads the current one), deployments and services
  (also list + watch: the Controller owns them), serviceaccounts, roles, rolebindings,
  networkpolicies, poddisruptionbudgets (also delete, when turned off).
- endpointslices get/list/watch: never called by the operator, but the gateway Role it creates
  grants them, and Kubernetes lets a subject create or bind a Role only with the permissions
  that Role grants (RBAC escalation prevention).
- persistentvolumeclaims patch: volume expansion (spec.storage.size grown).
- events.k8s.io events create + patch: Warning Events for refused spec changes.
*/}}
{{- define "kvstore-operator.rules" -}}
- apiGroups: ["kvstore.dev"]
  resources: ["kvclusters"]
  verbs: ["list", "watch"]
- apiGroups: ["kvstore.dev"]
  resources: ["kvclusters/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["create", "patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
