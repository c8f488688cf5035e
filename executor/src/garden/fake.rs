//! An in-memory Garden for unit tests of the step engine (and of callers such as the agent).
//! Processes are scripted by path: each run looks up a [`Script`] that says what the process
//! writes, how long it lives and how it reacts to signals. Every call is recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use garden_api::{ContainerInfo, ContainerSpec, ProcessSpec, Signal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{BackendError, BackendResult, Garden, Io, RunningProcess, Signaller};

/// How a fake process behaves.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub stdout: String,
    pub stderr: String,
    pub exit: i32,
    /// Lives this long before exiting with `exit`; `None` = exits at once.
    pub runs_for: Option<Duration>,
    /// Ignores SIGTERM (only SIGKILL ends it).
    pub ignores_term: bool,
    /// Ignores every signal (a stuck process).
    pub unkillable: bool,
    /// Run fails with this error instead of starting.
    pub spawn_error: Option<String>,
}

impl Script {
    pub fn exit(code: i32) -> Self {
        Script {
            exit: code,
            ..Default::default()
        }
    }
    pub fn sleep(d: Duration) -> Self {
        Script {
            runs_for: Some(d),
            ..Default::default()
        }
    }
}

/// A recorded stream-in.
#[derive(Debug, Clone)]
pub struct StreamedIn {
    pub handle: String,
    pub user: String,
    pub destination: String,
    pub tar: Vec<u8>,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, ContainerSpec>,
    scripts: HashMap<String, Script>,
    runs: Vec<ProcessSpec>,
    signals: Vec<(String, Signal)>,
    streamed_in: Vec<StreamedIn>,
    /// Files StreamOut serves: (handle, path) -> bytes.
    files: HashMap<(String, String), Vec<u8>>,
    events: Vec<String>,
    next: u64,
    stream_in_error: Option<String>,
}

/// The fake; clone it to keep a handle for assertions.
#[derive(Clone, Default)]
pub struct FakeGarden {
    // A std mutex: nothing awaits while it is held.
    state: Arc<Mutex<State>>,
    /// Woken at every Run, for tests that act once a process has started.
    started: Arc<tokio::sync::Notify>,
}

impl FakeGarden {
    pub fn new() -> Self {
        Self::default()
    }
    /// Script what running `path` does.
    pub fn script(&self, path: &str, script: Script) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(path.to_string(), script);
    }
    pub fn runs(&self) -> Vec<ProcessSpec> {
        self.state.lock().unwrap().runs.clone()
    }
    /// Wait until `n` processes have been run in all.
    pub async fn wait_for_runs(&self, n: usize) {
        loop {
            let notified = self.started.notified();
            tokio::pin!(notified);
            // Registered before the check, so a Run between the two is not missed.
            notified.as_mut().enable();
            if self.state.lock().unwrap().runs.len() >= n {
                return;
            }
            notified.await;
        }
    }
    pub fn signals(&self) -> Vec<(String, Signal)> {
        self.state.lock().unwrap().signals.clone()
    }
    pub fn streamed_in(&self) -> Vec<StreamedIn> {
        self.state.lock().unwrap().streamed_in.clone()
    }
    pub fn containers(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .containers
            .keys()
            .cloned()
            .collect()
    }
    pub fn container_spec(&self, handle: &str) -> Option<ContainerSpec> {
        self.state.lock().unwrap().containers.get(handle).cloned()
    }
    pub fn put_file(&self, handle: &str, path: &str, bytes: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert((handle.to_string(), path.to_string()), bytes.to_vec());
    }
    pub fn set_events(&self, events: &[&str]) {
        self.state.lock().unwrap().events = events.iter().map(|s| s.to_string()).collect();
    }
    pub fn fail_stream_in(&self, message: &str) {
        self.state.lock().unwrap().stream_in_error = Some(message.to_string());
    }
}

struct FakeProcess {
    id: String,
    done: watch::Receiver<Option<i32>>,
    signals: Arc<FakeSignaller>,
}

struct FakeSignaller {
    id: String,
    state: Arc<Mutex<State>>,
    tx: watch::Sender<Option<Signal>>,
}

#[async_trait]
impl Signaller for FakeSignaller {
    async fn signal(&self, signal: Signal) -> BackendResult<()> {
        self.state
            .lock()
            .unwrap()
            .signals
            .push((self.id.clone(), signal));
        let _ = self.tx.send(Some(signal));
        Ok(())
    }
}

#[async_trait]
impl RunningProcess for FakeProcess {
    fn id(&self) -> String {
        self.id.clone()
    }
    async fn wait(&mut self) -> BackendResult<i32> {
        let v = self
            .done
            .wait_for(|v| v.is_some())
            .await
            .map_err(|_| BackendError::new("process vanished"))?;
        Ok(v.expect("checked is_some"))
    }
    fn signaller(&self) -> Arc<dyn Signaller> {
        self.signals.clone()
    }
}

#[async_trait]
impl Garden for FakeGarden {
    async fn create(&self, spec: &ContainerSpec) -> BackendResult<String> {
        let mut st = self.state.lock().unwrap();
        st.next += 1;
        let handle = if spec.handle.is_empty() {
            format!("fake-{}", st.next)
        } else {
            spec.handle.clone()
        };
        if st.containers.contains_key(&handle) {
            return Err(BackendError::new(format!(
                "Handle '{handle}' already in use"
            )));
        }
        st.containers.insert(handle.clone(), spec.clone());
        Ok(handle)
    }

    async fn destroy(&self, handle: &str) -> BackendResult<()> {
        match self.state.lock().unwrap().containers.remove(handle) {
            Some(_) => Ok(()),
            None => Err(BackendError::new(format!("unknown handle: {handle}"))),
        }
    }

    async fn info(&self, handle: &str) -> BackendResult<ContainerInfo> {
        let st = self.state.lock().unwrap();
        if !st.containers.contains_key(handle) {
            return Err(BackendError::new(format!("unknown handle: {handle}")));
        }
        Ok(ContainerInfo {
            state: "active".into(),
            events: Some(st.events.clone()),
            ..Default::default()
        })
    }

    async fn run(
        &self,
        handle: &str,
        spec: &ProcessSpec,
        io: Io,
    ) -> BackendResult<Box<dyn RunningProcess>> {
        let script = {
            let mut st = self.state.lock().unwrap();
            if !st.containers.contains_key(handle) {
                return Err(BackendError::new(format!("unknown handle: {handle}")));
            }
            st.runs.push(spec.clone());
            st.next += 1;
            st.scripts.get(&spec.path).cloned().unwrap_or_default()
        };
        self.started.notify_waiters();
        if let Some(e) = script.spawn_error {
            return Err(BackendError::new(e));
        }
        let id = format!("proc-{}", uuid::Uuid::new_v4());
        let (done_tx, done_rx) = watch::channel(None);
        let (sig_tx, mut sig_rx) = watch::channel(None);
        let signals = Arc::new(FakeSignaller {
            id: id.clone(),
            state: self.state.clone(),
            tx: sig_tx,
        });
        tokio::spawn(async move {
            let Io {
                mut stdout,
                mut stderr,
            } = io;
            if let Some(w) = stdout.as_mut() {
                let _ = w.write_all(script.stdout.as_bytes()).await;
            }
            if let Some(w) = stderr.as_mut() {
                let _ = w.write_all(script.stderr.as_bytes()).await;
            }
            let status = match script.runs_for {
                None => script.exit,
                Some(d) => {
                    let sleep = tokio::time::sleep(d);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break script.exit,
                            r = sig_rx.changed() => {
                                if r.is_err() { break script.exit; }
                                let sig = *sig_rx.borrow_and_update();
                                match sig {
                                    _ if script.unkillable => {}
                                    Some(Signal::Kill) => break 137,
                                    Some(Signal::Terminate) if !script.ignores_term => break 143,
                                    _ => {}
                                }
                            }
                        }
                    }
                }
            };
            if let Some(w) = stdout.as_mut() {
                let _ = w.shutdown().await;
            }
            if let Some(w) = stderr.as_mut() {
                let _ = w.shutdown().await;
            }
            let _ = done_tx.send(Some(status));
        });
        Ok(Box::new(FakeProcess {
            id,
            done: done_rx,
            signals,
        }))
    }

    async fn stream_in(
        &self,
        handle: &str,
        user: &str,
        destination: &str,
        mut tar: Box<dyn AsyncRead + Send + Unpin>,
    ) -> BackendResult<()> {
        let mut bytes = Vec::new();
        tar.read_to_end(&mut bytes)
            .await
            .map_err(|e| BackendError::new(e.to_string()))?;
        let mut st = self.state.lock().unwrap();
        if let Some(e) = st.stream_in_error.clone() {
            return Err(BackendError::new(e));
        }
        st.streamed_in.push(StreamedIn {
            handle: handle.into(),
            user: user.into(),
            destination: destination.into(),
            tar: bytes,
        });
        Ok(())
    }

    async fn stream_out(
        &self,
        handle: &str,
        _user: &str,
        source: &str,
    ) -> BackendResult<Box<dyn AsyncRead + Send + Unpin>> {
        let bytes = self
            .state
            .lock()
            .unwrap()
            .files
            .get(&(handle.to_string(), source.to_string()))
            .cloned()
            .ok_or_else(|| BackendError::new(format!("no such file: {source}")))?;
        let name = source.rsplit('/').next().unwrap_or(source).to_string();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .map_err(|e| BackendError::new(e.to_string()))?;
        let out = builder
            .into_inner()
            .map_err(|e| BackendError::new(e.to_string()))?;
        Ok(Box::new(std::io::Cursor::new(out)))
    }
}
