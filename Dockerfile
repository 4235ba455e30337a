# syntax=docker/dockerfile:1
# Terrapod VCS: terrapod-api and terrapod-poller in one small non-root image.
#   docker build -t terrapod-vcs .                 (runtime image)
#   docker build --target sim -t terrapod-vcs-sim . (adds git and the VCS simulator, for the demo)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p terrapod-api -p terrapod-poller -p terrapod-vcs-sim \
 && mkdir -p /out \
 && cp target/release/terrapod-api target/release/terrapod-poller target/release/terrapod-vcs-sim /out/

FROM debian:bookworm-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin terrapod
COPY --from=build /out/terrapod-api /out/terrapod-poller /usr/local/bin/

# The simulator needs git; it is never part of the runtime image.
FROM base AS sim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/terrapod-vcs-sim /usr/local/bin/
USER 10001:10001
EXPOSE 9999
ENTRYPOINT ["terrapod-vcs-sim"]
CMD ["--listen", "0.0.0.0:9999", "--seed-demo"]

FROM base AS runtime
USER 10001:10001
ENV TERRAPOD_LOG__FORMAT=json
EXPOSE 8080 9090
ENTRYPOINT ["terrapod-api"]
CMD ["serve"]
