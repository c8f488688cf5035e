//! The plain routes: one fresh connection per request, `Connection: close`, JSON in and out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use garden_api::chunked::{encode_chunk, LAST_CHUNK};
use garden_api::routes::build_query;
use garden_api::{
    to_wire, BandwidthLimits, BulkInfo, BulkMetrics, Capacity, ContainerInfo, ContainerSpec,
    CpuLimits, DiskLimits, Empty, HandleResponse, HandlesResponse, MemoryLimits, Metrics,
    NetInRequest, NetInResponse, NetOutRule, ProcessSpec, PropertyValue, Route, StopRequest,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::{
    dial, error_from_response, read_head, request_head, Address, Body, Head, Stream,
};
use crate::error::ClientError;
use crate::process::{self, Process, ProcessIo};

/// Size of the chunks a StreamIn tar is sent in.
const STREAM_IN_CHUNK: usize = 64 * 1024;
/// After a StreamIn write fails, how long to look for the server's (error) reply.
const EARLY_REPLY_WAIT: Duration = Duration::from_secs(1);

/// A Garden client. Cheap to clone; holds no connection between calls.
#[derive(Debug, Clone)]
pub struct Client {
    addr: Arc<Address>,
}

impl Client {
    pub fn new(addr: Address) -> Client {
        Client {
            addr: Arc::new(addr),
        }
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call::<Empty>(Route::Ping, &[], None, None)
            .await
            .map(drop)
    }

    pub async fn capacity(&self) -> Result<Capacity, ClientError> {
        self.call(Route::Capacity, &[], None, None).await
    }

    /// Create a container; returns its handle.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, ClientError> {
        let r: HandleResponse = self
            .call(Route::Create, &[], None, Some(to_wire(spec)))
            .await?;
        Ok(r.handle)
    }

    /// Handles of the containers whose properties match every `(name, value)` pair.
    pub async fn list(&self, filter: &[(String, String)]) -> Result<Vec<String>, ClientError> {
        let pairs: Vec<(&str, &str)> = filter
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let query = (!pairs.is_empty()).then(|| build_query(&pairs));
        let r: HandlesResponse = self.call(Route::List, &[], query, None).await?;
        Ok(r.handles)
    }

    pub async fn destroy(&self, handle: &str) -> Result<(), ClientError> {
        self.call::<Empty>(Route::Destroy, &[handle], None, None)
            .await
            .map(drop)
    }

    pub async fn stop(&self, handle: &str, kill: bool) -> Result<(), ClientError> {
        let body = to_wire(&StopRequest { kill });
        self.call::<Empty>(Route::Stop, &[handle], None, Some(body))
            .await
            .map(drop)
    }

    pub async fn info(&self, handle: &str) -> Result<ContainerInfo, ClientError> {
        self.call(Route::Info, &[handle], None, None).await
    }

    pub async fn bulk_info(&self, handles: &[String]) -> Result<BulkInfo, ClientError> {
        let query = build_query(&[("handles", &handles.join(","))]);
        self.call::<Option<BulkInfo>>(Route::BulkInfo, &[], Some(query), None)
            .await
            .map(Option::unwrap_or_default)
    }

    pub async fn metrics(&self, handle: &str) -> Result<Metrics, ClientError> {
        self.call(Route::Metrics, &[handle], None, None).await
    }

    pub async fn bulk_metrics(&self, handles: &[String]) -> Result<BulkMetrics, ClientError> {
        let query = build_query(&[("handles", &handles.join(","))]);
        self.call::<Option<BulkMetrics>>(Route::BulkMetrics, &[], Some(query), None)
            .await
            .map(Option::unwrap_or_default)
    }

    /// Extract an uncompressed tar into `destination` as `user`. The tar is streamed to the
    /// server chunk by chunk as it is read, never buffered whole.
    pub async fn stream_in<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        handle: &str,
        user: &str,
        destination: &str,
        tar: R,
    ) -> Result<(), ClientError> {
        let target = format!(
            "{}?{}",
            Route::StreamIn.path(&[handle]),
            build_query(&[("destination", destination), ("user", user)])
        );
        let what = format!("PUT {target}");
        let stream = dial(&self.addr).await?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let head = request_head(
            "PUT",
            &target,
            &[
                ("Content-Type", "application/x-tar".into()),
                ("Transfer-Encoding", "chunked".into()),
                ("Connection", "close".into()),
            ],
        );
        // Read the reply while still sending, like Go's transport: a server that rejects the
        // request early (unknown container) may answer without reading the tar at all.
        let (head, leftover) = {
            let send = async {
                wr.write_all(&head).await.map_err(SendError::Write)?;
                send_chunked(&mut wr, tar).await
            };
            let receive = read_head(&mut rd, &what);
            tokio::pin!(send, receive);
            let mut sent = false;
            let (head, leftover) = loop {
                tokio::select! {
                    res = &mut send, if !sent => match res {
                        Ok(()) => sent = true,
                        Err(e) => {
                            // A write failure usually means the server answered and closed; prefer
                            // its answer when it is already there.
                            if let SendError::Write(_) = e {
                                if let Ok(Ok(reply)) = tokio::time::timeout(EARLY_REPLY_WAIT, &mut receive).await {
                                    break reply;
                                }
                            }
                            return Err(e.into_client_error(&what));
                        }
                    },
                    res = &mut receive => break res?,
                }
            };
            if head.is_success() && !sent {
                send.await.map_err(|e| e.into_client_error(&what))?;
            }
            (head, leftover)
        };
        let body = Body::new(&head, leftover, rd)?;
        finish::<Empty>(&what, &head, body).await.map(drop)
    }

    /// Stream `source` out of the container as a tar, read as `user`. The returned reader
    /// yields the response body as it arrives.
    pub async fn stream_out(
        &self,
        handle: &str,
        user: &str,
        source: &str,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, ClientError> {
        let target = format!(
            "{}?{}",
            Route::StreamOut.path(&[handle]),
            build_query(&[("source", source), ("user", user)])
        );
        let what = format!("GET {target}");
        let (head, mut body) = self.exchange("GET", &target, None).await?;
        if !head.is_success() {
            let bytes = body.read_all(&what).await?;
            return Err(error_from_response(&what, head.status, &bytes));
        }
        Ok(Box::new(body))
    }

    pub async fn current_bandwidth_limits(
        &self,
        handle: &str,
    ) -> Result<BandwidthLimits, ClientError> {
        self.call(Route::CurrentBandwidthLimits, &[handle], None, None)
            .await
    }

    pub async fn current_cpu_limits(&self, handle: &str) -> Result<CpuLimits, ClientError> {
        self.call(Route::CurrentCpuLimits, &[handle], None, None)
            .await
    }

    pub async fn current_disk_limits(&self, handle: &str) -> Result<DiskLimits, ClientError> {
        self.call(Route::CurrentDiskLimits, &[handle], None, None)
            .await
    }

    pub async fn current_memory_limits(&self, handle: &str) -> Result<MemoryLimits, ClientError> {
        self.call(Route::CurrentMemoryLimits, &[handle], None, None)
            .await
    }

    /// Map a host port to a container port; 0 lets the server choose.
    pub async fn net_in(
        &self,
        handle: &str,
        host_port: u32,
        container_port: u32,
    ) -> Result<NetInResponse, ClientError> {
        let body = to_wire(&NetInRequest {
            handle: handle.into(),
            host_port,
            container_port,
        });
        self.call(Route::NetIn, &[handle], None, Some(body)).await
    }

    pub async fn net_out(&self, handle: &str, rule: &NetOutRule) -> Result<(), ClientError> {
        self.call::<Empty>(Route::NetOut, &[handle], None, Some(to_wire(rule)))
            .await
            .map(drop)
    }

    pub async fn bulk_net_out(
        &self,
        handle: &str,
        rules: &[NetOutRule],
    ) -> Result<(), ClientError> {
        self.call::<Empty>(Route::BulkNetOut, &[handle], None, Some(to_wire(&rules)))
            .await
            .map(drop)
    }

    /// Body is a bare integer of nanoseconds (Go's `time.Duration`), saturated at `i64::MAX`.
    pub async fn set_grace_time(&self, handle: &str, grace: Duration) -> Result<(), ClientError> {
        let nanos = i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
        self.call::<Empty>(Route::SetGraceTime, &[handle], None, Some(to_wire(&nanos)))
            .await
            .map(drop)
    }

    /// All properties. Guardian answers `null` for an unknown container; that reads as empty.
    pub async fn properties(&self, handle: &str) -> Result<BTreeMap<String, String>, ClientError> {
        self.call::<Option<BTreeMap<String, String>>>(Route::Properties, &[handle], None, None)
            .await
            .map(Option::unwrap_or_default)
    }

    pub async fn property(&self, handle: &str, key: &str) -> Result<String, ClientError> {
        let r: PropertyValue = self
            .call(Route::Property, &[handle, key], None, None)
            .await?;
        Ok(r.value)
    }

    pub async fn set_property(
        &self,
        handle: &str,
        key: &str,
        value: &str,
    ) -> Result<(), ClientError> {
        let body = to_wire(&PropertyValue {
            value: value.into(),
        });
        self.call::<Empty>(Route::SetProperty, &[handle, key], None, Some(body))
            .await
            .map(drop)
    }

    pub async fn remove_property(&self, handle: &str, key: &str) -> Result<(), ClientError> {
        self.call::<Empty>(Route::RemoveProperty, &[handle, key], None, None)
            .await
            .map(drop)
    }

    /// Start a process. Returns once the process started and the requested output streams are
    /// attached; errors in starting it (e.g. executable not found) come back from this call.
    pub async fn run(
        &self,
        handle: &str,
        spec: &ProcessSpec,
        io: ProcessIo,
    ) -> Result<Process, ClientError> {
        let path = Route::Run.path(&[handle]);
        let body = to_wire(spec);
        let head = request_head(
            "POST",
            &path,
            &[
                ("Content-Length", body.len().to_string()),
                ("Content-Type", "application/json".into()),
            ],
        );
        let mut request = head;
        request.extend_from_slice(&body);
        process::start(
            &self.addr,
            handle,
            &spec.id,
            format!("POST {path}"),
            request,
            io,
        )
        .await
    }

    /// Attach to a running (or finished but retained) process: receive its exit status and the
    /// output it produces from now on.
    pub async fn attach(
        &self,
        handle: &str,
        process_id: &str,
        io: ProcessIo,
    ) -> Result<Process, ClientError> {
        let path = Route::Attach.path(&[handle, process_id]);
        let request = request_head("GET", &path, &[]);
        process::start(
            &self.addr,
            handle,
            process_id,
            format!("GET {path}"),
            request,
            io,
        )
        .await
    }

    /// Send one plain request and return the reply's head and body reader.
    async fn exchange(
        &self,
        method: &str,
        target: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(Head, Body<Stream>), ClientError> {
        let what = format!("{method} {target}");
        let mut headers = Vec::new();
        if let Some(body) = &body {
            headers.push(("Content-Length", body.len().to_string()));
            headers.push(("Content-Type", "application/json".to_string()));
        }
        headers.push(("Connection", "close".to_string()));
        let mut request = request_head(method, target, &headers);
        request.extend_from_slice(body.as_deref().unwrap_or_default());

        let mut stream = dial(&self.addr).await?;
        tracing::trace!(request = %what, "sending");
        stream
            .write_all(&request)
            .await
            .map_err(|e| ClientError::io(format!("sending {what}"), e))?;
        let (head, leftover) = read_head(&mut stream, &what).await?;
        let body = Body::new(&head, leftover, stream)?;
        Ok((head, body))
    }

    /// A plain JSON round trip on `route`.
    async fn call<T: DeserializeOwned>(
        &self,
        route: Route,
        params: &[&str],
        query: Option<String>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let mut target = route.path(params);
        if let Some(q) = query {
            target.push('?');
            target.push_str(&q);
        }
        let (head, body) = self.exchange(route.method(), &target, body).await?;
        finish(&format!("{} {target}", route.method()), &head, body).await
    }
}

/// Read a reply to the end: decode one JSON value on 2xx, the error otherwise.
async fn finish<T: DeserializeOwned>(
    what: &str,
    head: &Head,
    mut body: Body<impl AsyncRead + Unpin>,
) -> Result<T, ClientError> {
    let bytes = body.read_all(what).await?;
    if !head.is_success() {
        return Err(error_from_response(what, head.status, &bytes));
    }
    // Like Go's json.Decoder: exactly one value, trailing bytes ignored; nothing at all is EOF.
    match serde_json::Deserializer::from_slice(&bytes)
        .into_iter::<T>()
        .next()
    {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(ClientError::Protocol(format!(
            "bad response to {what}: {e}"
        ))),
        None => Err(ClientError::Protocol(format!(
            "bad response to {what}: empty body (status {})",
            head.status
        ))),
    }
}

/// Why sending a StreamIn body failed: the caller's tar reader, or the connection.
enum SendError {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl SendError {
    fn into_client_error(self, what: &str) -> ClientError {
        match self {
            SendError::Read(e) => {
                ClientError::io(format!("reading the tar to send with {what}"), e)
            }
            SendError::Write(e) => ClientError::io(format!("sending the tar body of {what}"), e),
        }
    }
}

/// Copy `body` to `wr` with chunked transfer coding, then the terminating chunk. A failing
/// reader leaves the body unterminated so the server sees a truncated upload, not a short tar.
async fn send_chunked<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut body: impl AsyncRead + Unpin,
) -> Result<(), SendError> {
    let mut buf = vec![0u8; STREAM_IN_CHUNK];
    loop {
        let n = body.read(&mut buf).await.map_err(SendError::Read)?;
        if n == 0 {
            break;
        }
        wr.write_all(&encode_chunk(&buf[..n]))
            .await
            .map_err(SendError::Write)?;
    }
    wr.write_all(LAST_CHUNK).await.map_err(SendError::Write)?;
    wr.flush().await.map_err(SendError::Write)
}
