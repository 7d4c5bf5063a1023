{{/*
Names, labels and the pieces every FlashSale pod shares.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "flashsale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name (63 characters at most, DNS-1123). A release whose name already holds
the chart name is used as is: `helm install flashsale` gives `flashsale-api`, not
`flashsale-flashsale-api`.
*/}}
{{- define "flashsale.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: (dict "root" $ "component" "api") */}}
{{- define "flashsale.componentName" -}}
{{- printf "%s-%s" (include "flashsale.fullname" .root | trunc 52 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "flashsale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flashsale.namespace" -}}
{{- .Release.Namespace -}}
{{- end -}}

{{/* Labels on every object: (dict "root" $ "component" "api"); component may be empty. */}}
{{- define "flashsale.labels" -}}
helm.sh/chart: {{ include "flashsale.chart" .root }}
{{ include "flashsale.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: flashsale
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels (immutable on Deployments and StatefulSets: never add to them). */}}
{{- define "flashsale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flashsale.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/*
metadata.annotations of a top-level object, from commonAnnotations plus extra ones:
(dict "root" $ "extra" map). Nothing at all when there are none; use it as
`  {{- include "flashsale.annotations" ... }}` right after the labels.
*/}}
{{- define "flashsale.annotations" -}}
{{- $all := merge (deepCopy (default dict .extra)) (deepCopy (default dict .root.Values.commonAnnotations)) -}}
{{- with $all }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{/* The FlashSale image: registry/repository:tag@digest (tag defaults to appVersion). */}}
{{- define "flashsale.image" -}}
{{- $image := .Values.image -}}
{{- $repository := $image.repository -}}
{{- if $image.registry -}}
{{- $repository = printf "%s/%s" $image.registry $image.repository -}}
{{- end -}}
{{- $tag := default .Chart.AppVersion $image.tag | toString -}}
{{- if $image.digest -}}
{{- printf "%s:%s@%s" $repository $tag $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* An image of a development data store: (dict "image" .Values.redis.image) */}}
{{- define "flashsale.storeImage" -}}
{{- $image := .image -}}
{{- $repository := $image.repository -}}
{{- if $image.registry -}}
{{- $repository = printf "%s/%s" $image.registry $image.repository -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s:%s@%s" $repository ($image.tag | toString) $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository ($image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "flashsale.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . | quote }}
        {{- end }}
{{- end }}
{{- end -}}

{{/* The ServiceAccount of the API, admitter and persister (they never call the Kubernetes API). */}}
{{- define "flashsale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flashsale.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "flashsale.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "flashsale.componentName" (dict "root" . "component" "operator")) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator serves; empty when it serves every namespace. */}}
{{- define "flashsale.operator.namespaces" -}}
{{- if not .Values.operator.watchAllNamespaces -}}
{{- default (list .Release.Namespace) .Values.operator.watchNamespaces | uniq | join "," -}}
{{- end -}}
{{- end -}}

{{/* What the operator scales by default: the API's HPA, or its Deployment without one. */}}
{{- define "flashsale.operator.defaultTargetKind" -}}
{{- if .Values.api.autoscaling.enabled -}}HorizontalPodAutoscaler{{- else -}}Deployment{{- end -}}
{{- end -}}

{{/* --- Secrets ------------------------------------------------------------------------- */}}

{{- define "flashsale.datastoreSecretName" -}}
{{- include "flashsale.componentName" (dict "root" . "component" "datastores") -}}
{{- end -}}

{{/* Where REDIS_URL comes from: (list secretName key) */}}
{{- define "flashsale.redisUrlRef" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret -}}
{{- list .Values.externalRedis.existingSecret .Values.externalRedis.existingSecretKey | toJson -}}
{{- else -}}
{{- list (include "flashsale.datastoreSecretName" .) "redis-url" | toJson -}}
{{- end -}}
{{- end -}}

{{- define "flashsale.databaseUrlRef" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.existingSecret -}}
{{- list .Values.externalDatabase.existingSecret .Values.externalDatabase.existingSecretKey | toJson -}}
{{- else -}}
{{- list (include "flashsale.datastoreSecretName" .) "database-url" | toJson -}}
{{- end -}}
{{- end -}}

{{/* Whether the chart renders the data-store Secret at all. */}}
{{- define "flashsale.datastoreSecretNeeded" -}}
{{- $redis := or .Values.redis.enabled (not .Values.externalRedis.existingSecret) -}}
{{- $db := or .Values.postgresql.enabled (not .Values.externalDatabase.existingSecret) -}}
{{- if or $redis $db -}}true{{- end -}}
{{- end -}}

{{- define "flashsale.tokenSecretName" -}}
{{- default (include "flashsale.componentName" (dict "root" . "component" "tokens")) .Values.tokens.existingSecret -}}
{{- end -}}

{{/* --- What every FlashSale container shares ------------------------------------------ */}}

{{/*
Environment of a FlashSale process: (dict "root" $ "tokens" bool "admin" bool "identity" bool
"extra" map); identity: the shop's identity provider (the API verifies shoppers' JWTs with it,
the operator refuses sales requiring identity without it) and, with tokens, the identity key;
extra is the role's settings with its extraEnv merged in (extraEnv first: it wins).
Settings are environment variables only (flashsale/settings.py), so the data-store URLs and
token keys come from Secrets through secretKeyRef.
*/}}
{{- define "flashsale.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $redis := include "flashsale.redisUrlRef" $root | fromJsonArray -}}
{{- $db := include "flashsale.databaseUrlRef" $root | fromJsonArray -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ index $redis 0 | quote }}
      key: {{ index $redis 1 | quote }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ index $db 0 | quote }}
      key: {{ index $db 1 | quote }}
{{- if .tokens }}
- name: FLASHSALE_TOKEN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flashsale.tokenSecretName" $root | quote }}
      key: token-key
- name: FLASHSALE_TOKEN_KEY_PREVIOUS
  valueFrom:
    secretKeyRef:
      name: {{ include "flashsale.tokenSecretName" $root | quote }}
      key: token-key-previous
      optional: true
{{- end }}
{{- if and .tokens .identity }}
- name: FLASHSALE_IDENTITY_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flashsale.tokenSecretName" $root | quote }}
      key: identity-key
      optional: true
{{- end }}
{{- if .admin }}
- name: FLASHSALE_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "flashsale.tokenSecretName" $root | quote }}
      key: admin-token
{{- end }}
{{- $settings := dict
      "FLASHSALE_DATABASE_SCHEMA" $v.config.databaseSchema
      "FLASHSALE_REDIS_PREFIX" $v.config.redisPrefix
      "FLASHSALE_REDIS_CLUSTER" (ternary "false" $v.externalRedis.cluster $v.redis.enabled)
      "FLASHSALE_LOG_LEVEL" $v.config.logLevel
      "FLASHSALE_LOG_JSON" $v.config.logJson -}}
{{- if .identity }}
{{- $settings = merge $settings (include "flashsale.identitySettings" $root | fromYaml) }}
{{- end }}
{{- /* later wins: the chart's settings, config.extraEnv, the role's own (extra) */}}
{{- $settings = merge (deepCopy (default dict .extra)) (deepCopy (default dict $v.config.extraEnv)) $settings -}}
{{- range $name, $value := $settings }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* --- The shop's identity provider ------------------------------------------------- */}}

{{/* Where a JWKS from identity.jwksSecret is mounted (read-only) in the API and operator pods. */}}
{{- define "flashsale.identityJwksDir" -}}/etc/flashsale/identity{{- end -}}

{{/*
The FLASHSALE_IDENTITY_* settings of identity.* (YAML, name: value); nothing when no provider is
set. Fails on what the process would refuse at start (flashsale/config.py), so a bad value stops
`helm install` instead of a crash-looping pod.
*/}}
{{- define "flashsale.identitySettings" -}}
{{- $id := .Values.identity -}}
{{- if and $id.jwksUrl $id.jwksSecret.name -}}
{{- fail "identity: set identity.jwksUrl or identity.jwksSecret.name, not both" -}}
{{- end -}}
{{- if or $id.jwksUrl $id.jwksSecret.name -}}
{{- if not (and $id.issuer $id.audience) -}}
{{- fail "identity: with a JWKS (identity.jwksUrl or identity.jwksSecret.name), identity.issuer and identity.audience are required" -}}
{{- end -}}
{{- if $id.jwksUrl }}
FLASHSALE_IDENTITY_JWKS_URL: {{ $id.jwksUrl | quote }}
{{- else }}
FLASHSALE_IDENTITY_JWKS_FILE: {{ printf "%s/jwks.json" (include "flashsale.identityJwksDir" .) | quote }}
{{- end }}
FLASHSALE_IDENTITY_ISSUER: {{ $id.issuer | quote }}
FLASHSALE_IDENTITY_AUDIENCE: {{ $id.audience | quote }}
FLASHSALE_IDENTITY_ALGORITHMS: {{ $id.algorithms | quote }}
{{- end -}}
{{- end -}}

{{/* The JWKS Secret's volume (with flashsale.volumes), when identity.jwksSecret.name is set. */}}
{{- define "flashsale.identityVolumes" -}}
{{- with .Values.identity.jwksSecret.name }}
- name: identity-jwks
  secret:
    secretName: {{ . | quote }}
    items:
      - key: {{ $.Values.identity.jwksSecret.key | quote }}
        path: jwks.json
{{- end }}
{{- end -}}

{{- define "flashsale.identityVolumeMounts" -}}
{{- if .Values.identity.jwksSecret.name }}
- name: identity-jwks
  mountPath: {{ include "flashsale.identityJwksDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod-level security context: the restricted Pod Security Standard. */}}
{{- define "flashsale.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{/* Container-level security context: the restricted Pod Security Standard, read-only root. */}}
{{- define "flashsale.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/*
The writable places of a FlashSale container: /tmp, and under it the folder of Prometheus'
multi-process files (PROMETHEUS_MULTIPROC_DIR in the image). A mount of its own, because the
/tmp emptyDir hides the folder the image has, and `flashsale api` expects it to exist.
*/}}
{{- define "flashsale.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit | quote }}
- name: prometheus-multiproc
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- end -}}

{{- define "flashsale.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: prometheus-multiproc
  mountPath: /tmp/flashsale-metrics
{{- end -}}

{{/* A probe from values: (dict "probe" .Values.api.livenessProbe "handler" map) */}}
{{- define "flashsale.probe" -}}
{{- $probe := omit .probe "enabled" -}}
{{- toYaml (merge (deepCopy .handler) $probe) -}}
{{- end -}}

{{/*
Scheduling fields of a pod spec (indented for a Deployment's): (dict "root" $ "values" .Values.api).
Nothing when none is set; use it as `      {{- include "flashsale.scheduling" ... }}`.
*/}}
{{- define "flashsale.scheduling" -}}
{{- with .values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
{{- end }}
{{- with .values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
{{- end }}
{{- with .values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
{{- end }}
{{- with .values.priorityClassName }}
      priorityClassName: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
A CustomResourceDefinition of files/crds/ (the one copy of it) with the chart's labels and
helm.sh/resource-policy: keep (deleting a CRD deletes every object of it).
*/}}
{{- define "flashsale.crd" -}}
{{- $crd := fromYaml (.root.Files.Get .file) }}
{{- $labels := merge (include "flashsale.labels" (dict "root" .root "component" "operator") | fromYaml) (default dict $crd.metadata.labels) }}
{{- $annotations := merge (dict "helm.sh/resource-policy" "keep") (deepCopy (default dict .root.Values.commonAnnotations)) }}
{{- $_ := set $crd "metadata" (dict "name" $crd.metadata.name "labels" $labels "annotations" $annotations) }}
{{ toYaml $crd }}
{{- end -}}
