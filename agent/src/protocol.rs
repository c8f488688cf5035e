//! Every message on the bus, with the DEA's exact field names (spec §2-3) and the task
//! subjects of the agent issue. Incoming messages are parsed leniently where the DEA was
//! lenient (missing optional fields) and refused where it validated (spec §3.4).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Subjects (spec §2.1).
pub mod subject {
    pub const ADVERTISE: &str = "dea.advertise";
    pub const LOCATE: &str = "dea.locate";
    pub const STOP: &str = "dea.stop";
    pub const UPDATE: &str = "dea.update";
    pub const FIND_DROPLET: &str = "dea.find.droplet";
    pub const HEARTBEAT: &str = "dea.heartbeat";
    pub const SHUTDOWN: &str = "dea.shutdown";
    pub const HEALTHMANAGER_START: &str = "healthmanager.start";
    pub const DROPLET_EXITED: &str = "droplet.exited";
    pub const ROUTER_REGISTER: &str = "router.register";
    pub const ROUTER_UNREGISTER: &str = "router.unregister";
    pub const ROUTER_START: &str = "router.start";
    pub const STAGING_STOP: &str = "staging.stop";
    /// The queue subject (and queue group name) any agent may stage from.
    pub const STAGING: &str = "staging";
    pub const TASK_STATUS: &str = "task.status";
    pub const TASK_TERMINATE: &str = "task.terminate";
    pub const TASK_COMPLETED: &str = "task.completed";

    /// `dea.<uuid>.start`: start one instance on this agent.
    pub fn start(agent_id: &str) -> String {
        format!("dea.{agent_id}.start")
    }
    /// `staging.<uuid>.start`: stage on this agent.
    pub fn staging_start(agent_id: &str) -> String {
        format!("staging.{agent_id}.start")
    }
    /// `task.<uuid>.run`: run a one-off task on this agent.
    pub fn task_run(agent_id: &str) -> String {
        format!("task.{agent_id}.run")
    }
}

/// Instance states (spec §4), as they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Born,
    Starting,
    Running,
    Stopping,
    Stopped,
    Crashed,
    Resuming,
    Evacuating,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Born => "BORN",
            InstanceState::Starting => "STARTING",
            InstanceState::Running => "RUNNING",
            InstanceState::Stopping => "STOPPING",
            InstanceState::Stopped => "STOPPED",
            InstanceState::Crashed => "CRASHED",
            InstanceState::Resuming => "RESUMING",
            InstanceState::Evacuating => "EVACUATING",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementProperties {
    pub zone: String,
}

/// `dea.advertise` (spec §3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advertise {
    pub id: String,
    pub stacks: Vec<String>,
    #[serde(default)]
    pub url: Option<String>,
    pub available_memory: u64,
    pub available_disk: u64,
    #[serde(default)]
    pub app_id_to_count: BTreeMap<String, u64>,
    #[serde(default)]
    pub placement_properties: PlacementProperties,
}

/// `dea.shutdown` (hello + app counts, spec §3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goodbye {
    pub id: String,
    pub ip: String,
    pub version: String,
    #[serde(default)]
    pub app_id_to_count: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// MB.
    pub mem: u64,
    /// MB.
    pub disk: u64,
    pub fds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub label: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_option: Option<serde_json::Value>,
    pub credentials: serde_json::Value,
    #[serde(default)]
    pub syslog_drain_url: Option<String>,
}

/// An egress rule as the controller sends it (Garden's NetOut rule shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressRule {
    /// `all`, `tcp`, `udp`, `icmp`.
    pub protocol: String,
    /// `a.b.c.d`, `a.b.c.d-e.f.g.h` or `a.b.c.d/n`.
    pub destination: String,
    /// `80` or `8000-9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<bool>,
}

/// `dea.<uuid>.start` (spec §3.4). Validation per the spec happens in
/// [`StartMessage::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct StartMessage {
    /// Application id.
    pub droplet: String,
    pub name: String,
    pub stack: String,
    #[serde(default)]
    pub uris: Vec<String>,
    #[serde(default)]
    pub prod: bool,
    #[serde(default)]
    pub sha1: Option<String>,
    #[serde(
        default,
        rename = "executableFile",
        skip_serializing_if = "Option::is_none"
    )]
    pub executable_file: Option<String>,
    #[serde(default, rename = "executableUri")]
    pub executable_uri: Option<String>,
    pub version: String,
    #[serde(default)]
    pub services: Vec<Service>,
    pub limits: Limits,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "default_partition")]
    pub cc_partition: String,
    #[serde(default)]
    pub console: bool,
    #[serde(default)]
    pub debug: Option<String>,
    #[serde(default)]
    pub start_command: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub health_check_timeout: Option<f64>,
    #[serde(default)]
    pub vcap_application: serde_json::Value,
    pub index: u64,
    #[serde(default)]
    pub egress_network_rules: Vec<EgressRule>,
}

/// A staging request's `start_message`: `null` or an empty object means none.
fn empty_start_message<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<StartMessage>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match &v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Object(m) if m.is_empty() => Ok(None),
        _ => serde_json::from_value(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn default_partition() -> String {
    "default".into()
}

/// Upper bounds that keep hostile or mistaken messages from asking for absurd containers.
pub const MAX_MEMORY_MB: u64 = 1 << 30;
pub const MAX_DISK_MB: u64 = 1 << 30;
pub const MAX_FDS: u64 = 1 << 20;

impl StartMessage {
    /// The checks a start message must pass before anything is reserved.
    pub fn validate(&self) -> Result<(), String> {
        if self.droplet.is_empty() {
            return Err("droplet (application id) is empty".into());
        }
        if self.limits.mem == 0 || self.limits.mem > MAX_MEMORY_MB {
            return Err(format!("limits.mem {} out of range", self.limits.mem));
        }
        if self.limits.disk > MAX_DISK_MB {
            return Err(format!("limits.disk {} out of range", self.limits.disk));
        }
        if self.limits.fds > MAX_FDS {
            return Err(format!("limits.fds {} out of range", self.limits.fds));
        }
        if let Some(sha1) = &self.sha1 {
            if sha1.len() != 40 || !sha1.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("sha1 {sha1:?} is not 40 hex digits"));
            }
        }
        for e in &self.env {
            if !e.contains('=') {
                return Err(format!("env entry {e:?} has no '='"));
            }
        }
        Ok(())
    }

    /// `env` as a list of (name, value), split at the first `=`.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// The instance filters of `dea.stop` and `dea.find.droplet` (spec §3.8): an instance matches
/// when it belongs to `droplet` and passes every filter given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceFilter {
    pub droplet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indices: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<Vec<InstanceState>>,
}

impl InstanceFilter {
    pub fn matches(
        &self,
        app_id: &str,
        version: &str,
        instance_id: &str,
        index: u64,
        state: InstanceState,
    ) -> bool {
        if self.droplet != app_id {
            return false;
        }
        if self.version.as_deref().is_some_and(|v| v != version) {
            return false;
        }
        if self.instances.is_some() || self.instance_ids.is_some() {
            let listed = self
                .instances
                .iter()
                .chain(self.instance_ids.iter())
                .flatten()
                .any(|i| i == instance_id);
            if !listed {
                return false;
            }
        }
        if self.indices.as_ref().is_some_and(|i| !i.contains(&index)) {
            return false;
        }
        if self.states.as_ref().is_some_and(|s| !s.contains(&state)) {
            return false;
        }
        true
    }
}

/// `dea.find.droplet` request (spec §3.10).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FindDroplet {
    #[serde(flatten)]
    pub filter: InstanceFilter,
    #[serde(default)]
    pub include_stats: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// `YYYY-MM-DD HH:MM:SS +0000`.
    pub time: String,
    /// CPU-seconds per wall-second between the last two samples.
    pub cpu: f64,
    /// Bytes: rss + cache - inactive_file.
    pub mem: u64,
    /// Bytes.
    pub disk: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub name: String,
    pub uris: Vec<String>,
    pub host: String,
    pub port: u16,
    /// Seconds since the instance became RUNNING.
    pub uptime: u64,
    /// Bytes.
    pub mem_quota: u64,
    /// Bytes.
    pub disk_quota: u64,
    pub fds_quota: u64,
    pub usage: Usage,
}

/// One reply per matching instance to `dea.find.droplet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindDropletReply {
    pub dea: String,
    pub droplet: String,
    pub version: String,
    pub instance: String,
    pub index: u64,
    pub state: InstanceState,
    pub state_timestamp: f64,
    pub staged: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_uri_v2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

/// `dea.update` (spec §3.9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub droplet: String,
    #[serde(default)]
    pub uris: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatInstance {
    pub cc_partition: String,
    pub droplet: String,
    pub version: String,
    pub instance: String,
    pub index: u64,
    pub state: InstanceState,
    pub state_timestamp: f64,
}

/// `dea.heartbeat` (spec §3.11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub dea: String,
    pub droplets: Vec<HeartbeatInstance>,
}

/// `droplet.exited` (spec §3.12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropletExited {
    pub cc_partition: String,
    pub droplet: String,
    pub version: String,
    pub instance: String,
    pub index: u64,
    /// `CRASHED`.
    pub reason: String,
    pub exit_status: i64,
    pub exit_description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_timestamp: Option<i64>,
}

/// `router.register` / `router.unregister` (spec §3.13); the directory server's registration
/// has no `dea`, `app` or `private_instance_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterRegister {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dea: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub uris: Vec<String>,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_instance_id: Option<String>,
}

/// `staging.stop` (spec §3.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingStop {
    pub app_id: String,
}

/// An admin buildpack offered in a staging request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminBuildpack {
    pub key: String,
    /// A zip URL.
    pub url: String,
}

/// The `properties` of a staging request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StagingProperties {
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub resources: Option<Limits>,
    /// `K=V` entries.
    #[serde(default)]
    pub environment: Vec<String>,
    #[serde(default)]
    pub meta: Option<StagingMeta>,
    /// A custom buildpack: a zip URL (or a git URL, when git is in the stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildpack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildpack_git_url: Option<String>,
    /// Use this admin buildpack, skipping detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildpack_key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingMeta {
    /// Overrides the detected start command.
    #[serde(default)]
    pub command: Option<String>,
}

/// `staging.<uuid>.start` and the `staging` queue (spec §3.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingRequest {
    pub app_id: String,
    pub task_id: String,
    pub stack: String,
    /// The app package (zip).
    pub download_uri: String,
    /// Where the droplet is POSTed (multipart, field `upload[droplet]`).
    pub upload_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildpack_cache_download_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildpack_cache_upload_uri: Option<String>,
    #[serde(default)]
    pub properties: StagingProperties,
    /// Started on this agent after a successful staging (with the new sha1) when present;
    /// `null` and `{}` (what a controller sends for "do not start") are absent.
    #[serde(
        default,
        deserialize_with = "empty_start_message",
        skip_serializing_if = "Option::is_none"
    )]
    pub start_message: Option<StartMessage>,
    #[serde(default)]
    pub admin_buildpacks: Vec<AdminBuildpack>,
    #[serde(default)]
    pub egress_network_rules: Vec<EgressRule>,
    /// MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_limit: Option<u64>,
    #[serde(default)]
    pub accepts_http: bool,
}

/// `error_info` of a failed staging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingErrorInfo {
    /// `NoAppDetectedError`, `BuildpackCompileFailed`, `BuildpackReleaseFailed`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// Every reply to a staging request (spec §3.6): the setup reply carries
/// `task_streaming_log_url`, the completion reply the detection results or `error`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StagingReply {
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_streaming_log_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_buildpack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildpack_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub droplet_sha1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_start_command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procfile: Option<BTreeMap<String, String>>,
    /// `null` on success (always present, as the DEA sends it).
    pub error: Option<String>,
    #[serde(default)]
    pub error_info: Option<StagingErrorInfo>,
}

/// Task states: `waiting` (no capacity yet), `running`, then one of the final ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Waiting,
    Running,
    /// Exit status 0.
    Finished,
    /// Non-zero exit status.
    Failed,
    /// Ended by `task.terminate`.
    Terminated,
    /// The agent could not run it.
    Error,
}

impl TaskState {
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Waiting | TaskState::Running)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// MB.
    #[serde(default)]
    pub mem: u64,
    /// MB.
    #[serde(default)]
    pub disk: u64,
}

/// `task.<uuid>.run` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    pub task_id: String,
    pub stack: String,
    /// Shell text run with `sh -c` as vcap in /home/vcap.
    pub command: String,
    /// Shell text run first (as vcap); a failure ends the task as `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_script: Option<String>,
    /// Given to the command as `$1` (and in `TASK_INPUT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// A tgz unpacked into /home/vcap before the command runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub droplet_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(default)]
    pub limits: TaskLimits,
    /// Seconds; the task is terminated (state `failed`) when it runs longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub env: Vec<String>,
}

/// Reply to `task.<uuid>.run`: accepted as `waiting` or `running`, or `error` with a reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReply {
    pub task_id: String,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `task.status` and `task.terminate` requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRef {
    pub task_id: String,
}

/// Reply to `task.status`, and the body of `task.completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub state: TaskState,
    pub exit_status: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    /// Contents of the task's result, when it has one.
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The error body every request subject answers with when it cannot be served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// Longest task id (tasks' and stagings'); it becomes part of a Garden handle.
pub const MAX_TASK_ID: usize = 128;

/// A task or staging task id must be usable in a Garden handle and a file name.
pub fn check_task_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_TASK_ID {
        return Err(format!("task_id must have 1 to {MAX_TASK_ID} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "task_id {id:?} may only hold letters, digits, '-', '_' and '.'"
        ));
    }
    // Ids name directories (`staging/<id>`, removed when the task ends): `..` would be the
    // agent's whole base_dir.
    if id.starts_with('.') {
        return Err(format!("task_id {id:?} must not start with '.'"));
    }
    Ok(())
}

/// Float seconds since the epoch (`state_timestamp`).
pub fn now_timestamp() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_message_from_the_spec_parses_and_validates() {
        let m: StartMessage = serde_json::from_str(
            r#"{"droplet": "app-guid", "name": "myapp", "stack": "cflinuxfs2",
 "uris": ["myapp.example.com"], "prod": false,
 "sha1": "5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c", "executableFile": "deprecated",
 "executableUri": "https://blobstore/droplets/app-guid?signature",
 "version": "app-version-guid",
 "services": [{"name": "db", "label": "p-mysql", "tags": ["mysql"], "plan": "100mb",
               "credentials": {"uri": "mysql://u:p@h:3306/d"}, "syslog_drain_url": null}],
 "limits": {"mem": 256, "disk": 1024, "fds": 16384},
 "env": ["FOO=bar", "CF_PROCESS_TYPE=web"],
 "cc_partition": "default", "console": false, "debug": null,
 "start_command": null, "health_check_timeout": 120,
 "vcap_application": {"application_name": "myapp"},
 "index": 0,
 "egress_network_rules": [{"protocol": "all", "destination": "0.0.0.0-255.255.255.255"}]}"#,
        )
        .unwrap();
        m.validate().unwrap();
        assert_eq!(m.env_pairs()[0], ("FOO".into(), "bar".into()));
        assert_eq!(m.health_check_timeout, Some(120.0));
    }

    #[test]
    fn task_ids_cannot_name_a_parent_directory() {
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_task_id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["task-1", "a.b_c", &"x".repeat(128)] {
            assert_eq!(check_task_id(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn filters_need_every_given_field_to_match() {
        let f: InstanceFilter =
            serde_json::from_str(r#"{"droplet":"a","indices":[0,2],"states":["RUNNING"]}"#)
                .unwrap();
        assert!(f.matches("a", "v", "i", 2, InstanceState::Running));
        assert!(!f.matches("a", "v", "i", 1, InstanceState::Running));
        assert!(!f.matches("a", "v", "i", 0, InstanceState::Crashed));
        assert!(!f.matches("b", "v", "i", 0, InstanceState::Running));
        let f: InstanceFilter =
            serde_json::from_str(r#"{"droplet":"a","instance_ids":["x"]}"#).unwrap();
        assert!(f.matches("a", "v", "x", 5, InstanceState::Starting));
        assert!(!f.matches("a", "v", "y", 5, InstanceState::Starting));
    }
}
