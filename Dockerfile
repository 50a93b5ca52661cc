# syntax=docker/dockerfile:1
# One image for every role: `docker run IMAGE api|worker|migrate|emulator|healthcheck ...`.
# Stages: cargo-chef plans and builds the dependencies once (a cached layer that only changes with Cargo.lock), then
# the workspace is built with --locked, and the binary is copied into distroless/cc: glibc, CA certificates, no
# shell, no package manager, a numeric non-root user.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# make: jemalloc, the binary's allocator, is built from source (tikv-jemalloc-sys); the slim image has gcc, not make.
# Unpinned: a Debian point release replaces the exact version, and bookworm's make is what we want.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The patched crates ([patch.crates-io], vendor/README.md): the recipe names them but carries no source for them.
COPY vendor/ vendor/
# The dependency layer: rebuilt only when the recipe (manifests and lock file) changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json --package imagegen
COPY . .
RUN cargo build --release --locked --package imagegen \
    && install -m 0755 target/release/imagegen /usr/local/bin/imagegen \
    && mkdir -p /out/generated_images /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="imagegen" \
      org.opencontainers.image.description="Image generation service: API, workers and provider emulator in one binary" \
      org.opencontainers.image.source="https://github.com/imagegen/imagegen" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=builder /usr/local/bin/imagegen /usr/local/bin/imagegen
# Writable places for the local storage backend and the standalone SQLite file, owned by the runtime user (a named
# volume mounted there takes this ownership).
COPY --from=builder --chown=65532:65532 /out/ /home/nonroot/
# The nonroot user of distroless (65532), by number so Kubernetes can verify runAsNonRoot.
USER 65532:65532
WORKDIR /home/nonroot
ENV API_HOST=0.0.0.0 \
    API_PORT=8003 \
    LOCAL_STORAGE_PATH=/home/nonroot/generated_images
EXPOSE 8003
# The binary checks itself: there is no curl (nor a shell) in this image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["imagegen", "healthcheck", "--url", "http://127.0.0.1:8003/health/live"]
ENTRYPOINT ["imagegen"]
CMD ["api"]
