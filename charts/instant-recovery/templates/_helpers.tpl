{{/* Name prefix of every object: the release name, with the chart's name unless included. */}}
{{- define "ir.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select one component's Pods: pass (dict "root" $ "component" "operator"). */}}
{{- define "ir.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ir.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of every object of one component. */}}
{{- define "ir.labels" -}}
{{ include "ir.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The ServiceAccount a component runs as: pass (dict "root" $ "component" "operator"). */}}
{{- define "ir.serviceAccountName" -}}
{{- $account := (index .root.Values .component).serviceAccount -}}
{{- if $account.create -}}
{{- default (printf "%s-%s" (include "ir.fullname" .root) .component) $account.name -}}
{{- else -}}
{{- required (printf "%s.serviceAccount.name is required when %s.serviceAccount.create is false" .component .component) $account.name -}}
{{- end -}}
{{- end -}}

{{- define "ir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Pod-spec fields both components share. */}}
{{- define "ir.podScheduling" -}}
{{- with .values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .component.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The watched namespaces as a JSON list: watchNamespaces and operator.watchNamespace. */}}
{{- define "ir.watchNamespaces" -}}
{{- $list := .Values.watchNamespaces | default list -}}
{{- with .Values.operator.watchNamespace -}}
{{- $list = append $list . -}}
{{- end -}}
{{- $list | uniq | toJson -}}
{{- end -}}

{{/* Arguments of the operator and the agent that concern repositories and namespaces. */}}
{{- define "ir.commonArgs" -}}
{{- $namespaces := include "ir.watchNamespaces" . | fromJsonArray -}}
- --file-roots={{ join "," .Values.repositories.fileRoots }}
{{- if .Values.repositories.allowAmbientCredentials }}
- --allow-ambient-credentials
{{- end }}
{{- with $namespaces }}
- --watch-namespaces={{ join "," . }}
{{- end }}
{{- end -}}

{{/* The file roots as volumes (fileRootVolumes) or read-only mounts (fileRootMounts). */}}
{{- define "ir.fileRootVolumes" -}}
{{- if .Values.repositories.mountFileRoots }}
{{- range $i, $root := .Values.repositories.fileRoots }}
- name: file-root-{{ $i }}
  hostPath:
    path: {{ $root }}
    type: DirectoryOrCreate
{{- end }}
{{- end }}
{{- end -}}

{{- define "ir.fileRootMounts" -}}
{{- if .Values.repositories.mountFileRoots }}
{{- range $i, $root := .Values.repositories.fileRoots }}
- name: file-root-{{ $i }}
  mountPath: {{ $root }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}
