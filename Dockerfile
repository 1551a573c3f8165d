# syntax=docker/dockerfile:1
# The operator image: both binaries on a minimal non-root runtime.
#
#   docker build -t extension-apiserver-operator:0.1.0 .
#
# /usr/local/bin/extension-apiserver-operator  the operator (the chart's container command)
# /usr/local/bin/extension-apiserver           the bundled aggregated API server; the operator
#                                              runs bundled-server Deployments from this same
#                                              image (--server-image)

# Build stage: Debian bookworm, whose glibc matches the distroless runtime below.
FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY crds ./crds
# The cache mounts keep the registry and target directory between builds (BuildKit). The server
# is built for speed (`release`), the operator for size (`operator`, see Cargo.toml).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin extension-apiserver \
    && cargo build --profile operator --locked --bin extension-apiserver-operator \
    && install -D -m 0755 target/operator/extension-apiserver-operator /out/extension-apiserver-operator \
    && install -D -m 0755 target/release/extension-apiserver /out/extension-apiserver

# Runtime stage: glibc and libgcc, CA certificates, no shell, user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="extension-apiserver-operator" \
      org.opencontainers.image.description="Operator and bundled server for Kubernetes aggregated API servers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/extension-apiserver-operator /usr/local/bin/extension-apiserver-operator
COPY --from=builder /out/extension-apiserver /usr/local/bin/extension-apiserver
USER 65532:65532
# The operator's admin port (/livez, /readyz, /metrics); the bundled server listens on 8443.
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/extension-apiserver-operator"]
