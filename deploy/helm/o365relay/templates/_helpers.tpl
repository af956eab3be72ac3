{{/* Names and labels. */}}
{{- define "o365relay.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "o365relay.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: central
{{- end -}}

{{- define "o365relay.labels" -}}
{{ include "o365relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "o365relay.serviceAccountName" -}}
{{- default (include "o365relay.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "o365relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The relay container: the one definition behind the StatefulSet and the
sidecar snippet (README.md), which deploy/kubernetes/validate compares with
the examples under deploy/kubernetes. Arguments: a dict with "root" (the
chart context), "sidecar" (bool) and "configMap" (the envFrom name).
*/}}
{{- define "o365relay.container" -}}
{{- $v := .root.Values -}}
{{- $res := ternary $v.sidecar.resources $v.resources .sidecar -}}
- name: o365relay
  image: {{ include "o365relay.image" .root }}
  {{- if not .sidecar }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- end }}
  args: ["serve"]
  {{- if .sidecar }}
  # A native sidecar (Kubernetes >= 1.29): started before the app, stopped
  # after it, so the app's last mail still finds the relay.
  restartPolicy: Always
  {{- end }}
  envFrom:
    - configMapRef:
        name: {{ .configMap }}
  env:
    {{- if not $v.workloadIdentity.enabled }}
    - name: AZURE_CLIENT_CERTIFICATE_PATH
      value: /etc/o365relay/cert/{{ $v.certificate.key }}
    {{- end }}
    - name: O365RELAY_SPOOL_DIR
      value: /var/spool/o365relay
    - name: GOMEMLIMIT
      value: {{ ternary $v.sidecar.goMemLimit $v.goMemLimit .sidecar | quote }}
    {{- if not .sidecar }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
  ports:
    - name: smtp
      containerPort: 2525
      protocol: TCP
    - name: admin
      containerPort: 9025
      protocol: TCP
  startupProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 2
    failureThreshold: 30
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  # /readyz for the Service, /healthz for restarts: a relay that cannot
  # reach Entra ID or Exchange is never restarted for it.
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 3
  lifecycle:
    preStop:
      # The image has no shell: the kubelet's own sleep (Kubernetes >= 1.30).
      sleep:
        seconds: {{ ternary $v.sidecar.preStopSeconds $v.preStopSeconds .sidecar }}
  resources:
    {{- toYaml $res | nindent 4 }}
  securityContext:
    {{- if .sidecar }}
    # Container-level: the app container of the pod may run otherwise.
    runAsUser: 65532
    runAsGroup: 65532
    runAsNonRoot: true
    {{- end }}
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    {{- if not $v.workloadIdentity.enabled }}
    - name: cert
      mountPath: /etc/o365relay/cert
      readOnly: true
    {{- end }}
    - name: spool
      mountPath: /var/spool/o365relay
{{- end -}}

{{- define "o365relay.certVolume" -}}
{{- if not .Values.workloadIdentity.enabled }}
- name: cert
  secret:
    secretName: {{ .Values.certificate.secretName }}
    # Read-only for the owner; fsGroup makes it readable by the relay.
    defaultMode: 0400
{{- end }}
{{- end -}}
