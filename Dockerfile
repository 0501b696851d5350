# sidewhale as a container image, for example as a sidecar of a CI pod:
# the test container then sets DOCKER_HOST=tcp://127.0.0.1:23750.
# proot needs no privileges, so the pod needs no securityContext changes.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p sidewhale-server

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends proot ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 sidewhale
COPY --from=build /src/target/release/sidewhale /usr/local/bin/sidewhale
USER sidewhale
EXPOSE 23750
ENTRYPOINT ["sidewhale"]
