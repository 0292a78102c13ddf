{{/*
The chart name, or nameOverride.
*/}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else "<release>-<name>", or the release
name alone when it already contains the chart name. 63 characters at most (DNS label).
*/}}
{{- define "kubetune.fullname" -}}
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

{{/*
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{/*
Selector labels (immutable once a Deployment exists: never add to them). Each workload adds
app.kubernetes.io/component.
*/}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the operator's leader-election Lease (in the release namespace).
*/}}
{{- define "kubetune.leaseName" -}}
{{- printf "%s-operator" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"image:tag" of the operator.
*/}}
{{- define "kubetune.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}

{{/*
"image:tag" of runner pods when a study names no image.
*/}}
{{- define "kubetune.runnerImage" -}}
{{- if not (has .Values.runner.variant (list "cpu" "cuda")) }}
{{- fail (printf "runner.variant: expected cpu or cuda, got %q" .Values.runner.variant) }}
{{- end }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion .Values.runner.variant) .Values.runner.image.tag }}
{{- printf "%s:%s" .Values.runner.image.repository $tag }}
{{- end }}

{{/*
Name of the Secret holding the PostgreSQL password and URL (generated or existing).
*/}}
{{- define "kubetune.postgresql.secretName" -}}
{{- default .Values.postgresql.auth.secretName .Values.postgresql.auth.existingSecret }}
{{- end }}

{{/*
Name of the PostgreSQL Service and StatefulSet.
*/}}
{{- define "kubetune.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the dashboard Deployment and Service.
*/}}
{{- define "kubetune.dashboard.fullname" -}}
{{- printf "%s-dashboard" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Checks of values that would otherwise render a chart that installs but does not work.
*/}}
{{- define "kubetune.validateValues" -}}
{{- if not (has .Values.defaultStorage.lookup (list "StudyNamespace" "ReleaseNamespace")) }}
{{- fail (printf "defaultStorage.lookup: expected StudyNamespace or ReleaseNamespace, got %q" .Values.defaultStorage.lookup) }}
{{- end }}
{{- if not (has .Values.runner.pullPolicy (list "IfNotPresent" "Always" "Never")) }}
{{- fail (printf "runner.pullPolicy: expected IfNotPresent, Always or Never, got %q" .Values.runner.pullPolicy) }}
{{- end }}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicas: more than one replica needs operator.leaderElection.enabled (else every replica acts)" }}
{{- end }}
{{- if and .Values.watchNamespaces (not (kindIs "slice" .Values.watchNamespaces)) }}
{{- fail "watchNamespaces: expected a list of namespace names, e.g. --set 'watchNamespaces={team-a,team-b}'" }}
{{- end }}
{{- end }}

{{/*
"k=v,k=v" from a map, sorted by key (the format of KUBETUNE_RUNNER_EXTRA_LABELS/_ENV).
*/}}
{{- define "kubetune.pairs" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- if or (contains "," (toString $value)) (contains "," $key) }}
{{- fail (printf "%s=%s: commas cannot be passed to the operator in runner.extraLabels/extraEnv" $key (toString $value)) }}
{{- end }}
{{- $pairs = append $pairs (printf "%s=%s" $key (toString $value)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
The rules the operator needs in each namespace it watches (Role or ClusterRole), derived from
operator/handlers.py and kopf:
- hpostudies: kopf lists and watches them and patches metadata (finalizer, its annotations).
- hpostudies/status: the status subresource is written with a separate patch.
- hpostudies/finalizers: pods are created with an owner reference that blocks owner deletion,
  which clusters with OwnerReferencesPermissionEnforcement only allow with this.
- pods: runner and estimate pods are created, listed by label, deleted.
- configmaps: the "<study>-spec" and "<study>-best" ConfigMaps are created, then replaced.
- secrets: the storage URL is read from the study's Secret; with
  defaultStorage.lookup=ReleaseNamespace the operator also writes "<study>-storage".
- events: kopf posts core/v1 events about each study.
*/}}
{{- define "kubetune.namespacedRules" -}}
- apiGroups: ["kubetune.dev"]
  resources: ["hpostudies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubetune.dev"]
  resources: ["hpostudies/status"]
  verbs: ["get", "patch"]
- apiGroups: ["kubetune.dev"]
  resources: ["hpostudies/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "update"]
- apiGroups: [""]
  resources: ["secrets"]
{{- if eq .Values.defaultStorage.lookup "ReleaseNamespace" }}
  verbs: ["get", "create", "update"]
{{- else }}
  verbs: ["get"]
{{- end }}
- apiGroups: [""]
  resources: ["events"]
  # create/patch: the study's events; list/watch: the kubelet's FailedMount events of runner
  # pods (the watch asks only for those), the one place a volume that cannot mount is named.
  verbs: ["create", "patch", "list", "watch"]
{{- end }}
