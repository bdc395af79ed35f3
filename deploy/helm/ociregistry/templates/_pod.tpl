{{/* The pod template shared by the Deployment and the StatefulSet. */}}
{{- define "ociregistry.podTemplate" -}}
metadata:
  labels:
    {{- include "ociregistry.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A changed config or secret rolls the pods.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ociregistry.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: ociregistry
      image: {{ include "ociregistry.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["--config-file", "/etc/ociregistry/config.yaml", "serve"]
      ports:
        - name: registry
          containerPort: {{ include "ociregistry.port" . }}
          protocol: TCP
        - name: health
          containerPort: {{ include "ociregistry.healthPort" . }}
          protocol: TCP
        {{- $metrics := include "ociregistry.metricsPort" . }}
        {{- if and $metrics (ne $metrics (include "ociregistry.healthPort" .)) }}
        - name: metrics
          containerPort: {{ $metrics }}
          protocol: TCP
        {{- end }}
        {{- with include "ociregistry.adminPort" . }}
        - name: admin
          containerPort: {{ . }}
          protocol: TCP
        {{- end }}
      env:
        {{- with dig "cluster" "advertiseFromEnv" "" .Values.config }}
        # How the other replicas reach this pod's pull port (cluster.advertiseFromEnv).
        - name: POD_IP
          valueFrom:
            fieldRef: {fieldPath: status.podIP}
        - name: {{ . }}
          value: {{ printf "http://$(POD_IP):%s" (include "ociregistry.port" $) | quote }}
        {{- end }}
        {{- with .Values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if or .Values.existingSecret .Values.secrets }}
      envFrom:
        - secretRef:
            name: {{ include "ociregistry.secretName" . }}
      {{- end }}
      # Liveness: the process answers. Readiness: the pull listener accepts and the cache
      # directory is writable; a failing provider or bucket reports "degraded" with 200, as
      # everything cached is still served.
      startupProbe:
        httpGet: {path: /healthz, port: health}
        {{- toYaml .Values.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet: {path: /healthz, port: health}
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet: {path: /readyz, port: health}
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/ociregistry
          readOnly: true
        - name: cache
          mountPath: {{ include "ociregistry.imagePath" . }}
        {{- $local := dig "storage" "localCache" "path" "" .Values.config }}
        {{- if and $local (ne $local (include "ociregistry.imagePath" .)) }}
        - name: local-cache
          mountPath: {{ $local }}
        {{- end }}
        # The root filesystem is read-only; some libraries want a writable /tmp.
        - name: tmp
          mountPath: /tmp
        {{- if .Values.extraPlugins.volume }}
        {{- $dir := include "ociregistry.pluginDir" . }}
        {{- range .Values.extraPlugins.files }}
        # An extra plugin beside the bundled ones.
        - name: extra-plugins
          mountPath: {{ printf "%s/%s" $dir . }}
          subPath: {{ . }}
          readOnly: true
        {{- end }}
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "ociregistry.fullname" . }}
    {{- if not (include "ociregistry.stateful" .) }}
    - name: cache
      emptyDir:
        {{- with .Values.persistence.emptyDirSizeLimit }}
        sizeLimit: {{ . }}
        {{- end }}
    {{- end }}
    {{- $local := dig "storage" "localCache" "path" "" .Values.config }}
    {{- if and $local (ne $local (include "ociregistry.imagePath" .)) }}
    - name: local-cache
      emptyDir:
        {{- with .Values.persistence.emptyDirSizeLimit }}
        sizeLimit: {{ . }}
        {{- end }}
    {{- end }}
    - name: tmp
      emptyDir: {sizeLimit: 256Mi}
    {{- with .Values.extraPlugins.volume }}
    - name: extra-plugins
      {{- toYaml . | nindent 6 }}
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
