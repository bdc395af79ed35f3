# syntax=docker/dockerfile:1
# The container image the Helm chart (deploy/helm/ociregistry) runs:
#   docker build -t ociregistry:0.1.0 .
#
# Layout (the same as a host install, see README "Deploy it"):
#   /usr/local/bin/ociregistry         the server
#   /usr/lib/ociregistry/plugins/      the bundled provider plugins (ecr, file, exec, kubelet;
#                                      exec and kubelet run helpers you mount into the image)
#   /etc/ociregistry/config.yaml       deploy/config.container.yaml (the chart mounts its ConfigMap here)
#   /var/lib/ociregistry/              the cache (imagePath), owned by the non-root user
# Ports: 8080 pulls, 8081 /healthz and /readyz, 9090 /metrics.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- build: the server and the bundled plugins, in release ----
FROM ${RUST_IMAGE} AS build
# aws-lc-sys (rustls' crypto) compiles C: a C toolchain, cmake and perl. Not pinned: this
# stage only compiles, and the base image's Debian release fixes what these resolve to.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make perl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The plugins are cdylibs: `cargo build -p` of their packages writes
# target/release/libociregistry_provider_*.so next to the binary.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p ociregistry -p ociregistry-provider-ecr -p ociregistry-provider-file \
        -p ociregistry-provider-exec -p ociregistry-provider-kubelet \
        -p ociregistry-provider-gcp -p ociregistry-provider-acr \
 && mkdir -p /out/bin /out/plugins /out/cache \
 && cp target/release/ociregistry /out/bin/ \
 && cp target/release/libociregistry_provider_ecr.so \
       target/release/libociregistry_provider_file.so \
       target/release/libociregistry_provider_exec.so \
       target/release/libociregistry_provider_kubelet.so \
       target/release/libociregistry_provider_gcp.so \
       target/release/libociregistry_provider_acr.so /out/plugins/

# ---- run: distroless (glibc, libgcc; no shell, no package manager), user nonroot ----
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/bin/ociregistry /usr/local/bin/ociregistry
COPY --from=build /out/plugins/ /usr/lib/ociregistry/plugins/
COPY deploy/config.container.yaml /etc/ociregistry/config.yaml
# The cache directory exists and belongs to the runtime user, so `docker run` without a
# volume works too (distroless has no mkdir: the empty directory comes from the build stage).
COPY --from=build --chown=65532:65532 /out/cache /var/lib/ociregistry
# 65532 is distroless' `nonroot`; numeric so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
EXPOSE 8080 8081 9090
# No HEALTHCHECK: distroless has no shell, curl or wget to run one, and the server has no
# self-probe subcommand. Kubernetes probes /healthz and /readyz on port 8081 instead (the
# chart does); under plain docker, probe http://<container>:8081/readyz from outside.
ENTRYPOINT ["/usr/local/bin/ociregistry", "--config-file", "/etc/ociregistry/config.yaml"]
CMD ["serve"]
