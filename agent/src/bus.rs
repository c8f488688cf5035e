//! The NATS connection: JSON in and out, invalid messages logged and dropped (spec §2), and
//! reconnection forever across every configured server.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bad NATS server address {addr:?}: {message}")]
    Address { addr: String, message: String },
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("cannot subscribe to {subject}: {message}")]
    Subscribe { subject: String, message: String },
    #[error("request on {subject} failed: {message}")]
    Request { subject: String, message: String },
    #[error("reply on {subject} is not valid: {message}")]
    Reply { subject: String, message: String },
}

/// A cheap-to-clone handle on the bus.
#[derive(Clone, Debug)]
pub struct Bus {
    client: async_nats::Client,
}

/// A message that parsed, with the inbox to answer on if it was a request.
#[derive(Debug)]
pub struct Incoming<T> {
    pub subject: String,
    pub body: T,
    pub reply: Option<String>,
}

impl Bus {
    /// Connect to the first reachable server of `servers`, then stay connected: the client
    /// reconnects forever (trying every server in turn) and re-subscribes by itself.
    pub async fn connect(servers: &[String], name: &str) -> Result<Bus, BusError> {
        let addrs = servers
            .iter()
            .map(|s| {
                s.parse::<async_nats::ServerAddr>()
                    .map_err(|e| BusError::Address {
                        addr: s.clone(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(Duration::from_secs(30))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(2000))
            })
            .event_callback(|event| async move {
                // The first connection happens before this callback can see it: every later
                // `Connected` is a reconnection.
                if matches!(event, async_nats::Event::Connected) {
                    crate::metrics::metrics().nats_reconnected();
                }
                tracing::info!(%event, "nats connection event");
            })
            .connect(addrs)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        Ok(Bus { client })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Publish `msg` as JSON; a failure is logged (the bus is fire-and-forget).
    pub async fn publish<T: Serialize>(&self, subject: impl Into<String>, msg: &T) {
        let subject = subject.into();
        let body = match serde_json::to_vec(msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(%subject, error = %e, "cannot encode message");
                return;
            }
        };
        if let Err(e) = self.client.publish(subject.clone(), body.into()).await {
            tracing::warn!(%subject, error = %e, "publish failed");
        }
    }

    /// Flush what was published (before exiting).
    pub async fn flush(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "nats flush failed");
        }
    }

    /// Decode a message body; `None` (logged) if it is not the JSON `T`.
    pub fn decode<T: DeserializeOwned>(msg: &async_nats::Message) -> Option<T> {
        match serde_json::from_slice(&msg.payload) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "dropping invalid message");
                None
            }
        }
    }

    /// Call `handler` for every valid message on `subject` (each in its own task, so a slow
    /// handler never holds up the next message); invalid ones are logged and dropped. With
    /// `queue`, one member of the queue group gets each message.
    pub async fn serve<T, F, Fut>(
        &self,
        subject: &str,
        queue: Option<&str>,
        handler: F,
    ) -> Result<tokio::task::JoinHandle<()>, BusError>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Incoming<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let sub = match queue {
            Some(q) => {
                self.client
                    .queue_subscribe(subject.to_string(), q.to_string())
                    .await
            }
            None => self.client.subscribe(subject.to_string()).await,
        }
        .map_err(|e| BusError::Subscribe {
            subject: subject.into(),
            message: e.to_string(),
        })?;
        Ok(tokio::spawn(async move {
            let mut sub = sub;
            while let Some(msg) = sub.next().await {
                let Some(body) = Bus::decode::<T>(&msg) else {
                    continue;
                };
                let incoming = Incoming {
                    subject: msg.subject.to_string(),
                    body,
                    reply: msg.reply.map(|r| r.to_string()),
                };
                tokio::spawn(handler(incoming));
            }
        }))
    }

    /// A request that expects one JSON reply within `timeout`.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        subject: &str,
        msg: &Q,
        timeout: Duration,
    ) -> Result<R, BusError> {
        let body = serde_json::to_vec(msg).map_err(|e| BusError::Request {
            subject: subject.into(),
            message: e.to_string(),
        })?;
        let reply = tokio::time::timeout(
            timeout,
            self.client.request(subject.to_string(), body.into()),
        )
        .await
        .map_err(|_| BusError::Request {
            subject: subject.into(),
            message: format!("no reply within {timeout:?}"),
        })?
        .map_err(|e| BusError::Request {
            subject: subject.into(),
            message: e.to_string(),
        })?;
        serde_json::from_slice(&reply.payload).map_err(|e| BusError::Reply {
            subject: subject.into(),
            message: e.to_string(),
        })
    }

    /// Publish a request and return the subscription its replies (however many) arrive on.
    pub async fn send_request<Q: Serialize>(
        &self,
        subject: &str,
        msg: &Q,
    ) -> Result<async_nats::Subscriber, BusError> {
        let inbox = self.client.new_inbox();
        let sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| BusError::Subscribe {
                subject: inbox.clone(),
                message: e.to_string(),
            })?;
        let body = serde_json::to_vec(msg).map_err(|e| BusError::Request {
            subject: subject.into(),
            message: e.to_string(),
        })?;
        self.client
            .publish_with_reply(subject.to_string(), inbox, body.into())
            .await
            .map_err(|e| BusError::Request {
                subject: subject.into(),
                message: e.to_string(),
            })?;
        Ok(sub)
    }

    /// A request that may get several replies: everything that arrives within `window`.
    pub async fn gather<Q: Serialize, R: DeserializeOwned>(
        &self,
        subject: &str,
        msg: &Q,
        window: Duration,
    ) -> Result<Vec<R>, BusError> {
        let mut sub = self.send_request(subject, msg).await?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
            if let Some(r) = Bus::decode(&m) {
                out.push(r);
            }
        }
        Ok(out)
    }
}
