//! A client of the control API, over the daemon's Unix socket or a TCP
//! address (with its token). One HTTP/1.1 connection per request: the CLI
//! makes a handful.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{ErrorBody, Filter, ProcessList, encode};

/// Where the API is.
#[derive(Clone, Debug)]
pub enum Target {
    /// A daemon's Unix socket.
    Unix(PathBuf),
    /// A TCP address (`host:port`), with the token to send, if any.
    Tcp {
        /// `host:port`.
        addr: String,
        /// Sent as `Authorization: Bearer`.
        token: Option<String>,
    },
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there: no daemon runs.
    #[error("no drover daemon is running (nothing answers at {where_}): start one with `drover daemon start`")]
    NoDaemon {
        /// The socket or address.
        where_: String,
    },
    /// The API answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The API's message.
        message: String,
    },
    /// The connection failed midway, or the answer was not what was expected.
    #[error("the control API at {where_}: {message}")]
    Protocol {
        /// The socket or address.
        where_: String,
        /// What happened.
        message: String,
    },
}

/// A client of the control API, over the daemon's Unix socket or TCP (with its
/// token); one HTTP/1.1 connection per request.
#[derive(Clone, Debug)]
pub struct Client {
    target: Target,
    timeout: std::time::Duration,
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// Its `event:` name (`message` if none).
    pub event: String,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

/// An open stream of server-sent events, decoded by `sse-stream`.
pub struct EventStream {
    events: sse_stream::SseStream<hyper::body::Incoming>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next event; `None` when the server closed the stream. Comments
    /// (keep-alives) and blocks without data are skipped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is taken from the stream only when this returns
    /// it; a dropped call loses nothing.
    ///
    /// # Errors
    ///
    /// When the connection breaks or the stream is not valid UTF-8; the
    /// stream ends after it.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, ClientError> {
        use futures_util::StreamExt as _;
        loop {
            match self.events.next().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Protocol { where_: "the event stream".into(), message: e.to_string() });
                }
                Some(Ok(sse)) => {
                    let Some(data) = sse.data else { continue };
                    let event = sse.event.unwrap_or_else(|| "message".to_owned());
                    return Ok(Some(SseEvent { event, data }));
                }
            }
        }
    }
}

impl Client {
    /// A client of `target`.
    pub fn new(target: Target) -> Client {
        Client { target, timeout: std::time::Duration::from_secs(300) }
    }

    /// Gives up on a request (connecting, then the whole answer) after
    /// `timeout` (default five minutes: a kill of many cluster jobs can take
    /// a while). An event stream's body is not limited.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Client {
        self.timeout = timeout;
        self
    }

    fn where_(&self) -> String {
        match &self.target {
            Target::Unix(p) => p.display().to_string(),
            Target::Tcp { addr, .. } => addr.clone(),
        }
    }

    /// Sends a request and returns the status and the body as it came.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes its connection; a request already sent
    /// may still have been carried out by the daemon.
    ///
    /// # Errors
    ///
    /// [`ClientError::NoDaemon`] when nothing listens, [`ClientError::Protocol`].
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let timed_out =
            || ClientError::Protocol { where_: self.where_(), message: format!("no answer within {:?}", self.timeout) };
        let whole = async {
            let response = self.send(method, path, body).await?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Protocol { where_: self.where_(), message: e.to_string() })?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, whole).await.unwrap_or_else(|_| Err(timed_out()))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let where_ = self.where_();
        let protocol =
            |e: &dyn std::fmt::Display| ClientError::Protocol { where_: where_.clone(), message: e.to_string() };
        let host = match &self.target {
            Target::Unix(_) => "localhost",
            Target::Tcp { addr, .. } => addr.as_str(),
        };
        let mut request = Request::builder().method(method).uri(path).header(hyper::header::HOST, host);
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let mut sender = match &self.target {
            Target::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|_| ClientError::NoDaemon { where_: where_.clone() })?;
                handshake(stream).await.map_err(|e| protocol(&e))?
            }
            Target::Tcp { addr, token } => {
                if let Some(token) = token {
                    request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
                }
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|_| ClientError::NoDaemon { where_: where_.clone() })?;
                handshake(stream).await.map_err(|e| protocol(&e))?
            }
        };
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| protocol(&e))?;
        sender.send_request(request).await.map_err(|e| protocol(&e))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes)));
            return Err(ClientError::Api { status, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            where_: self.where_(),
            message: format!("unexpected answer to {path}: {e}"),
        })
    }

    /// `GET path`, decoded from JSON.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes its connection; a request already sent
    /// may still have been carried out by the daemon.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; an error answer is [`ClientError::Api`] with its message.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    /// `POST path` with `body` as JSON, decoded from JSON.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes its connection; a request already sent
    /// may still have been carried out by the daemon.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; an error answer is [`ClientError::Api`] with its message.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).expect("a request serialises");
        self.json(Method::POST, path, Some(body)).await
    }

    /// The processes that match `filter`, oldest first: page after page of
    /// `GET /v1/processes` (of at most 10,000 each) until the last, or
    /// until `limit` processes came. The counts are the first page's.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping it abandons the pages not yet read.
    ///
    /// # Errors
    ///
    /// [`ClientError`], as [`get`](Self::get).
    pub async fn list(&self, filter: &Filter, limit: Option<usize>) -> Result<ProcessList, ClientError> {
        const MOST: usize = 10_000;
        let page = |have: usize, cursor: Option<&str>| {
            let want = limit.map_or(MOST, |l| l.saturating_sub(have).clamp(1, MOST));
            let after = cursor.map(|c| format!("&cursor={}", encode(c))).unwrap_or_default();
            format!("/v1/processes?{}limit={want}{after}", filter.query())
        };
        let mut list: ProcessList = self.get(&page(0, None)).await?;
        while let Some(cursor) = list.next_cursor.take() {
            if limit.is_some_and(|l| list.processes.len() >= l) {
                list.next_cursor = Some(cursor);
                break;
            }
            let next: ProcessList = self.get(&page(list.processes.len(), Some(&cursor))).await?;
            list.processes.extend(next.processes);
            list.next_cursor = next.next_cursor;
        }
        Ok(list)
    }

    /// Opens a stream of server-sent events (`GET path`).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes its connection; a request already sent
    /// may still have been carried out by the daemon.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn events(&self, path: &str) -> Result<EventStream, ClientError> {
        let response =
            tokio::time::timeout(self.timeout, self.send(Method::GET, path, None)).await.map_err(|_| {
                ClientError::Protocol { where_: self.where_(), message: format!("no answer within {:?}", self.timeout) }
            })??;
        if !response.status().is_success() {
            let status = response.status();
            return Err(ClientError::Api { status, message: format!("{status} for {path}") });
        }
        Ok(EventStream { events: sse_stream::SseStream::new(response.into_body()) })
    }
}

async fn handshake<S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
