# syntax=docker/dockerfile:1
# Build: docker build -t guardian-access .
# Run:   docker run --rm -p 7070:7070 -p 7071:7071 guardian-access    (the demo region, throwaway store)
#        docker run -v ga-data:/app/data -v /etc/guardian-access:/etc/guardian-access:ro -p 7070:7070 -p 7071:7071 \
#            guardian-access serve --admin-tokens /etc/guardian-access/tokens.json --config /etc/guardian-access/region.toml
#        docker run --rm guardian-access check --scenario fixtures/demo.json --actor 197701012382 --subject 201509162390

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches examples \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/decide.rs \
    && echo 'fn main() {}' > benches/handler.rs \
    && cargo build --release --locked \
    && rm -rf src benches examples
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY fixtures ./fixtures
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin guardian-access

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin guardian \
    && mkdir -p /app/data \
    && chown 10001:10001 /app/data
WORKDIR /app
COPY --from=build /src/target/release/guardian-access /usr/local/bin/guardian-access
COPY fixtures/demo.json ./fixtures/demo.json
USER 10001:10001
# Inside a container the listeners must bind every interface.
ENV GUARDIAN_ACCESS_CHECK_ADDR=0.0.0.0:7070 \
    GUARDIAN_ACCESS_ADMIN_ADDR=0.0.0.0:7071 \
    GUARDIAN_ACCESS_DATA_DIR=/app/data
# glibc raises its mmap threshold after the first large free, after which
# each background fold's arrays land on the heap and the process grows with
# every fold though nothing leaks; a fixed threshold keeps memory flat
# (examples/soak.rs: +25 % in 10 minutes without it, +3 % with it).
ENV MALLOC_MMAP_THRESHOLD_=131072
# The embedded store and the snapshot files: keep them on a volume.
VOLUME ["/app/data"]
# The check listener and the admin listener (SPEC §6).
EXPOSE 7070 7071
# SIGTERM: stop accepting, finish in-flight requests, close the store, exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/guardian-access"]
# The demo serves its admin API as plain HTTP; in production mount a
# certificate and set GUARDIAN_ACCESS_ADMIN_TLS_CERT and _KEY instead.
CMD ["serve", "--demo", "--admin-insecure"]
