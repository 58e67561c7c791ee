//! The accept loop both listeners share, and the limits it enforces: a
//! connection limit, a deadline for each request head, an idle timeout for
//! keep-alive connections, and a graceful stop that lets in-flight requests
//! finish.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Body;
use hyper::header::HeaderName;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, warn};

use crate::http::metrics::Metrics;
use crate::http::tls::{ClientCert, Tls};
use hyper::service::Service as _;

/// The header names `GET /v1/authz` reads.
#[derive(Debug, Clone)]
pub struct AuthzHeaders {
    /// Who is logged in (default `x-actor-id`).
    pub actor: HeaderName,
    /// Whose journal (default `x-subject-id`).
    pub subject: HeaderName,
    /// Which service (default `x-service`).
    pub service: HeaderName,
}

impl Default for AuthzHeaders {
    fn default() -> Self {
        AuthzHeaders {
            actor: HeaderName::from_static("x-actor-id"),
            subject: HeaderName::from_static("x-subject-id"),
            service: HeaderName::from_static("x-service"),
        }
    }
}

/// How the check listener treats its clients.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Most connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// A client must send a whole request head within this.
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this of its head (`408`).
    pub body_read_timeout: Duration,
    /// A connection whose client reads none of its answer for this long is
    /// closed.
    pub write_timeout: Duration,
    /// A population upload must arrive whole within this (`408`, nothing
    /// applied).
    pub import_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Header names for `/v1/authz`.
    pub authz: AuthzHeaders,
    /// How long a check carrying a `min_revision` this instance has not
    /// reached waits for it before answering `503`.
    pub min_revision_wait: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            import_timeout: Duration::from_secs(30 * 60),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            authz: AuthzHeaders::default(),
            min_revision_wait: Duration::from_millis(500),
        }
    }
}

/// The accept loop both listeners share: at most `max_connections`
/// connections (more are closed at once and counted), a request head within
/// `header_read_timeout`, idle connections closed, and on `shutdown` no new
/// connections while in-flight requests finish. Connections are counted in
/// `metrics`. With `tls`, each connection first completes a TLS handshake
/// (within `header_read_timeout`) with the configuration current when it
/// arrived.
pub async fn serve<H, F, B>(
    listener: impl Into<Listener>,
    config: &ListenerConfig,
    metrics: Arc<Metrics>,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> std::io::Result<()>
where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match listener.into() {
        Listener::Tcp(l) => serve_on(l, config, metrics, tls, shutdown, handler).await,
        Listener::Unix(l) => serve_on(l, config, metrics, tls, shutdown, handler).await,
    }
}

/// A bound listener: TCP, or a Unix socket (the sidecar's natural
/// transport: only processes on the host, with the socket's group, reach it).
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A Unix socket.
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Listener {
        Listener::Unix(l)
    }
}

/// What the accept loop needs of a listener.
trait Accept {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection, and how to name its peer in logs.
    fn next(&self) -> impl Future<Output = std::io::Result<(Self::Stream, String)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn next(&self) -> std::io::Result<(TcpStream, String)> {
        let (s, peer) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok((s, peer.to_string()))
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn next(&self) -> std::io::Result<(UnixStream, String)> {
        let (s, _) = self.accept().await?;
        Ok((s, "unix".to_owned()))
    }
}

async fn serve_on<L, H, F, B>(
    listener: L,
    config: &ListenerConfig,
    metrics: Arc<Metrics>,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> std::io::Result<()>
where
    L: Accept,
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.next() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connection_refused();
            debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        metrics.connection_opened();
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let (watcher, http, idle, handshake, write) = (
            graceful.watcher(),
            http.clone(),
            config.idle_timeout,
            config.header_read_timeout,
            config.write_timeout,
        );
        let tls = tls.clone();
        let conn_metrics = metrics.clone();
        tokio::spawn(
            async move {
                let served = match tls {
                    None => {
                        watcher
                            .watch(http.serve_connection(TokioIo::new(IdleTimeout::new(stream, idle, write)), service))
                            .await
                    }
                    Some(tls) => match tokio::time::timeout(handshake, tls.acceptor().accept(stream)).await {
                        Ok(Ok(stream)) => {
                            // A verified client certificate names its holder
                            // on every request of the connection.
                            let cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| ClientCert::of(c));
                            let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                                if let Some(c) = &cert {
                                    req.extensions_mut().insert(c.clone());
                                }
                                service.call(req)
                            });
                            watcher
                                .watch(
                                    http.serve_connection(TokioIo::new(IdleTimeout::new(stream, idle, write)), service),
                                )
                                .await
                        }
                        Ok(Err(e)) => {
                            debug!(error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            debug!("TLS handshake timed out");
                            Ok(())
                        }
                    },
                };
                if let Err(e) = served {
                    debug!(error = %e, "connection ended with an error");
                }
                conn_metrics.connection_closed();
                drop(permit);
            }
            .instrument(tracing::debug_span!("conn", peer = %peer)),
        );
    }
    drop(listener);
    info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("shutdown grace elapsed; closing remaining connections");
    }
    Ok(())
}

pub use idle::IdleTimeout;

mod idle {
    //! A stream that fails reads once it has been idle too long, so that a
    //! client holding a connection open without asking anything gives its
    //! slot back.
    //!
    //! Cheap on the hot path: I/O only sets a flag. The timer is checked when
    //! it fires: if there was activity since, it is re-armed, so an idle
    //! connection closes between one and two timeouts after its last byte,
    //! and a busy one costs one timer reset per timeout, not per request.

    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::time::{Instant, Sleep};

    /// A stream with an idle deadline, and a deadline for each write: a
    /// client that stops reading its answers loses the connection after
    /// `write_timeout`.
    #[derive(Debug)]
    pub struct IdleTimeout<S> {
        inner: S,
        timeout: Duration,
        deadline: Pin<Box<Sleep>>,
        active: bool,
        write_timeout: Duration,
        /// Armed while a write is blocked on the client.
        write_deadline: Pin<Box<Sleep>>,
        write_blocked: bool,
    }

    impl<S> IdleTimeout<S> {
        /// Wraps `inner`.
        pub fn new(inner: S, timeout: Duration, write_timeout: Duration) -> Self {
            IdleTimeout {
                inner,
                timeout,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                active: false,
                write_timeout,
                write_deadline: Box::pin(tokio::time::sleep(write_timeout)),
                write_blocked: false,
            }
        }

        /// A write made progress (`true`) or is blocked (`false`): an error
        /// once it has been blocked for `write_timeout`.
        fn write_progress(&mut self, progressed: bool, cx: &mut Context<'_>) -> Option<io::Error> {
            if progressed {
                self.write_blocked = false;
                return None;
            }
            if !self.write_blocked {
                self.write_blocked = true;
                let at = Instant::now() + self.write_timeout;
                self.write_deadline.as_mut().reset(at);
            }
            self.write_deadline
                .as_mut()
                .poll(cx)
                .is_ready()
                .then(|| io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))
        }

        /// Passes `r` on, counting progress and failing a write blocked too long.
        fn after_write<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
            match r {
                Poll::Pending => match self.write_progress(false, cx) {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Pending,
                },
                ready => {
                    self.write_progress(true, cx);
                    ready
                }
            }
        }

        fn touch(&mut self) {
            self.active = true;
        }

        /// Whether the connection has been idle for a whole timeout.
        fn expired(&mut self, cx: &mut Context<'_>) -> bool {
            while self.deadline.as_mut().poll(cx).is_ready() {
                if !self.active {
                    return true;
                }
                self.active = false;
                let next = Instant::now() + self.timeout;
                self.deadline.as_mut().reset(next);
            }
            false
        }
    }

    impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(r) => {
                    if buf.filled().len() > before {
                        self.touch();
                    }
                    Poll::Ready(r)
                }
                Poll::Pending if self.expired(cx) => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = r
                && n > 0
            {
                self.touch();
            }
            self.after_write(r, cx)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let r = Pin::new(&mut self.inner).poll_flush(cx);
            self.after_write(r, cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            if let Poll::Ready(Ok(n)) = r
                && n > 0
            {
                self.touch();
            }
            self.after_write(r, cx)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
    }
}
