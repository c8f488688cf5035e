//! The action language as it travels on the wire: every action is an object with exactly one
//! key naming its type (`{"run": {...}}`), nested actions are envelopes too. Decoding goes through
//! a JSON value so that every error names the offending field by its path in the tree, e.g.
//! `serial.actions[2].run.path: required`. YAML files are read into the same value first.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A bad action document; the message names the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
}

fn invalid(path: &str, message: impl Into<String>) -> ActionError {
    let path = if path.is_empty() {
        "<root>".to_string()
    } else {
        path.to_string()
    };
    ActionError::Invalid {
        path,
        message: message.into(),
    }
}

/// One action, serialised as its one-key envelope.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Download(DownloadAction),
    Upload(UploadAction),
    Run(RunAction),
    Timeout(TimeoutAction),
    EmitProgress(EmitProgressAction),
    Try(TryAction),
    Parallel(ParallelAction),
    Serial(SerialAction),
    Codependent(CodependentAction),
}

/// The envelope keys, in the reference decoder's precedence order.
pub const ACTION_KINDS: [&str; 9] = [
    "download",
    "upload",
    "run",
    "timeout",
    "emit_progress",
    "try",
    "parallel",
    "serial",
    "codependent",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DownloadAction {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub cache_key: String,
    #[serde(default)]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checksum_algorithm: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checksum_value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UploadAction {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_source: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentVariable {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// Absent keys mean "not set", not zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u64>,
    /// Deprecated and ignored, kept so documents round-trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMountedFile {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub content: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunAction {
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvironmentVariable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_limits: Option<ResourceLimits>,
    #[serde(default)]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_source: String,
    #[serde(default)]
    pub suppress_log_output: bool,
    /// Accepted for compatibility; not supported by this executor (rejected if non-empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounted_files: Vec<VolumeMountedFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeoutAction {
    pub action: Box<Action>,
    pub timeout_ms: i64,
    /// Deprecated nanosecond form; folded into `timeout_ms` when decoding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmitProgressAction {
    pub action: Box<Action>,
    pub start_message: String,
    pub success_message: String,
    pub failure_message_prefix: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TryAction {
    pub action: Box<Action>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParallelAction {
    pub actions: Vec<Action>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SerialAction {
    pub actions: Vec<Action>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodependentAction {
    pub actions: Vec<Action>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_source: String,
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Action::from_value(&v, "").map_err(serde::de::Error::custom)
    }
}

impl Action {
    /// Decode and validate a JSON document.
    pub fn from_json(text: &str) -> Result<Action, ActionError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ActionError::Parse {
            path: "<json>".into(),
            message: e.to_string(),
        })?;
        Action::parse_value(&v)
    }

    /// Decode and validate a YAML document (YAML is a superset of JSON, so JSON works too).
    pub fn from_yaml(text: &str) -> Result<Action, ActionError> {
        let v: Value = serde_yaml::from_str(text).map_err(|e| ActionError::Parse {
            path: "<yaml>".into(),
            message: e.to_string(),
        })?;
        Action::parse_value(&v)
    }

    /// Load a `.json`, `.yaml` or `.yml` file (anything else is read as YAML).
    pub fn load(path: &Path) -> Result<Action, ActionError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ActionError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            Action::from_json(&text)
        } else {
            Action::from_yaml(&text)
        };
        parsed.map_err(|e| match e {
            ActionError::Parse { message, .. } => ActionError::Parse {
                path: shown,
                message,
            },
            other => other,
        })
    }

    /// Decode then validate.
    pub fn parse_value(v: &Value) -> Result<Action, ActionError> {
        let action = Action::from_value(v, "")?;
        action.validate()?;
        Ok(action)
    }

    /// The envelope key of this action.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Download(_) => "download",
            Action::Upload(_) => "upload",
            Action::Run(_) => "run",
            Action::Timeout(_) => "timeout",
            Action::EmitProgress(_) => "emit_progress",
            Action::Try(_) => "try",
            Action::Parallel(_) => "parallel",
            Action::Serial(_) => "serial",
            Action::Codependent(_) => "codependent",
        }
    }

    /// Decode an envelope found at `path` (structure only; see [`Action::validate`]).
    pub fn from_value(v: &Value, path: &str) -> Result<Action, ActionError> {
        let obj = v.as_object().ok_or_else(|| {
            invalid(
                path,
                format!("expected an action object, got {}", kind_of(v)),
            )
        })?;
        let keys: Vec<&String> = obj
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| k)
            .collect();
        let key = match keys.as_slice() {
            [] => return Err(invalid(path, "empty action envelope (inner-action)")),
            [k] => k.as_str(),
            many => {
                let names: Vec<&str> = many.iter().map(|k| k.as_str()).collect();
                return Err(invalid(
                    path,
                    format!(
                        "action envelope must have exactly one key, got {}",
                        names.join(", ")
                    ),
                ));
            }
        };
        let here = join(path, key);
        let inner = obj[key].as_object().ok_or_else(|| {
            invalid(
                &here,
                format!("expected an object, got {}", kind_of(&obj[key])),
            )
        })?;
        Ok(match key {
            "download" => Action::Download(leaf(inner, &here)?),
            "upload" => Action::Upload(leaf(inner, &here)?),
            "run" => Action::Run(leaf(inner, &here)?),
            "timeout" => {
                let action = child(inner, &here)?;
                let timeout_ms = int_field(inner, "timeout_ms", &here)?;
                let timeout = match inner.get("timeout") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(int_field(inner, "timeout", &here)?),
                };
                let timeout_ms = match (timeout_ms, timeout) {
                    (0, Some(ns)) => ns / 1_000_000,
                    (ms, _) => ms,
                };
                Action::Timeout(TimeoutAction {
                    action,
                    timeout_ms,
                    timeout,
                    log_source: str_field(inner, "log_source", &here)?,
                })
            }
            "emit_progress" => Action::EmitProgress(EmitProgressAction {
                action: child(inner, &here)?,
                start_message: str_field(inner, "start_message", &here)?,
                success_message: str_field(inner, "success_message", &here)?,
                failure_message_prefix: str_field(inner, "failure_message_prefix", &here)?,
                log_source: str_field(inner, "log_source", &here)?,
            }),
            "try" => Action::Try(TryAction {
                action: child(inner, &here)?,
                log_source: str_field(inner, "log_source", &here)?,
            }),
            "parallel" => Action::Parallel(ParallelAction {
                actions: children(inner, &here)?,
                log_source: str_field(inner, "log_source", &here)?,
            }),
            "serial" => Action::Serial(SerialAction {
                actions: children(inner, &here)?,
                log_source: str_field(inner, "log_source", &here)?,
            }),
            "codependent" => Action::Codependent(CodependentAction {
                actions: children(inner, &here)?,
                log_source: str_field(inner, "log_source", &here)?,
            }),
            other => {
                return Err(invalid(
                    path,
                    format!(
                        "unknown action type {other:?} (expected one of {})",
                        ACTION_KINDS.join(", ")
                    ),
                ))
            }
        })
    }

    /// Check required fields and value ranges; the error names the first bad field's path.
    pub fn validate(&self) -> Result<(), ActionError> {
        self.validate_at("")
    }

    fn validate_at(&self, path: &str) -> Result<(), ActionError> {
        let here = join(path, self.kind());
        let require = |field: &str, value: &str| -> Result<(), ActionError> {
            if value.is_empty() {
                Err(invalid(&join(&here, field), "required"))
            } else {
                Ok(())
            }
        };
        match self {
            Action::Download(a) => {
                require("from", &a.from)?;
                require("to", &a.to)?;
                require("user", &a.user)?;
                if !(a.from.starts_with("http://") || a.from.starts_with("https://")) {
                    return Err(invalid(
                        &join(&here, "from"),
                        "must be an http:// or https:// URL",
                    ));
                }
                match (a.checksum_algorithm.is_empty(), a.checksum_value.is_empty()) {
                    (true, true) => {}
                    (false, true) => {
                        return Err(invalid(
                            &join(&here, "checksum_value"),
                            "required with checksum_algorithm",
                        ))
                    }
                    (true, false) => {
                        return Err(invalid(
                            &join(&here, "checksum_algorithm"),
                            "required with checksum_value",
                        ))
                    }
                    (false, false) => {
                        let alg = a.checksum_algorithm.to_ascii_lowercase();
                        if !["md5", "sha1", "sha256"].contains(&alg.as_str()) {
                            return Err(invalid(
                                &join(&here, "checksum_algorithm"),
                                format!(
                                    "invalid algorithm {:?} (expected md5, sha1 or sha256)",
                                    a.checksum_algorithm
                                ),
                            ));
                        }
                        if !a.checksum_value.chars().all(|c| c.is_ascii_hexdigit()) {
                            return Err(invalid(
                                &join(&here, "checksum_value"),
                                "must be a hex digest",
                            ));
                        }
                    }
                }
            }
            Action::Upload(a) => {
                require("from", &a.from)?;
                require("to", &a.to)?;
                require("user", &a.user)?;
            }
            Action::Run(a) => {
                require("path", &a.path)?;
                require("user", &a.user)?;
                for (i, e) in a.env.iter().enumerate() {
                    if e.name.is_empty() {
                        return Err(invalid(&format!("{here}.env[{i}].name"), "required"));
                    }
                }
                if !a.volume_mounted_files.is_empty() {
                    return Err(invalid(
                        &join(&here, "volume_mounted_files"),
                        "not supported by this executor",
                    ));
                }
            }
            Action::Timeout(a) => {
                if a.timeout_ms <= 0 {
                    return Err(invalid(
                        &join(&here, "timeout_ms"),
                        "must be greater than 0",
                    ));
                }
                a.action.validate_at(&join(&here, "action"))?;
            }
            Action::EmitProgress(a) => a.action.validate_at(&join(&here, "action"))?,
            Action::Try(a) => a.action.validate_at(&join(&here, "action"))?,
            Action::Parallel(ParallelAction { actions, .. })
            | Action::Serial(SerialAction { actions, .. })
            | Action::Codependent(CodependentAction { actions, .. }) => {
                for (i, a) in actions.iter().enumerate() {
                    a.validate_at(&format!("{here}.actions[{i}]"))?;
                }
            }
        }
        Ok(())
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decode a leaf action, naming the field serde complained about.
fn leaf<T: serde::de::DeserializeOwned>(
    inner: &Map<String, Value>,
    path: &str,
) -> Result<T, ActionError> {
    // Decode field by field first so a type error names its field, then the whole struct.
    let mut obj = Map::new();
    for (k, v) in inner {
        if v.is_null() {
            continue;
        }
        obj.insert(k.clone(), v.clone());
        if let Err(e) = serde_json::from_value::<T>(Value::Object(obj.clone())) {
            return Err(invalid(
                &join(path, k),
                strip_serde_position(&e.to_string()),
            ));
        }
    }
    serde_json::from_value(Value::Object(obj))
        .map_err(|e| invalid(path, strip_serde_position(&e.to_string())))
}

fn strip_serde_position(s: &str) -> String {
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

fn child(inner: &Map<String, Value>, path: &str) -> Result<Box<Action>, ActionError> {
    let here = join(path, "action");
    match inner.get("action") {
        None | Some(Value::Null) => Err(invalid(&here, "required")),
        Some(v) => Ok(Box::new(Action::from_value(v, &here)?)),
    }
}

fn children(inner: &Map<String, Value>, path: &str) -> Result<Vec<Action>, ActionError> {
    let here = join(path, "actions");
    let list = match inner.get("actions") {
        None | Some(Value::Null) => return Err(invalid(&here, "required")),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(invalid(
                &here,
                format!("expected an array, got {}", kind_of(other)),
            ))
        }
    };
    if list.is_empty() {
        return Err(invalid(&here, "must not be empty"));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let p = format!("{here}[{i}]");
            if v.is_null() {
                return Err(invalid(&p, "null action"));
            }
            Action::from_value(v, &p)
        })
        .collect()
}

fn str_field(inner: &Map<String, Value>, key: &str, path: &str) -> Result<String, ActionError> {
    match inner.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(invalid(
            &join(path, key),
            format!("expected a string, got {}", kind_of(other)),
        )),
    }
}

fn int_field(inner: &Map<String, Value>, key: &str, path: &str) -> Result<i64, ActionError> {
    match inner.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| invalid(&join(path, key), format!("expected an integer, got {n}"))),
        Some(other) => Err(invalid(
            &join(path, key),
            format!("expected an integer, got {}", kind_of(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Action::from_json(text).unwrap_err().to_string()
    }

    #[test]
    fn spec_example_round_trips() {
        let text = r#"{"serial": {"actions": [
          {"download": {"from": "https://blobs.example/droplet.tgz", "to": ".",
                "cache_key": "droplets-app1", "user": "vcap",
                "checksum_algorithm": "sha256", "checksum_value": "ab12"}},
          {"emit_progress": {"start_message": "Running migrations", "success_message": "Migrated",
             "failure_message_prefix": "Migration failed",
             "action": {"timeout": {"timeout_ms": 60000, "action":
                {"run": {"path": "/home/vcap/app/bin/migrate", "args": ["--all"],
                 "user": "vcap", "suppress_log_output": false,
                 "env": [{"name": "RAILS_ENV", "value": "production"}],
                 "resource_limits": {"nofile": 1024}, "log_source": "APP/TASK/migrate"}}}}}}]}}"#;
        let a = Action::from_json(text).unwrap();
        let Action::Serial(s) = &a else {
            panic!("not serial")
        };
        assert_eq!(s.actions.len(), 2);
        let again = Action::from_json(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(a, again);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(
            json["serial"]["actions"][0]["download"]["cache_key"],
            "droplets-app1"
        );
        let run =
            &json["serial"]["actions"][1]["emit_progress"]["action"]["timeout"]["action"]["run"];
        assert_eq!(run["resource_limits"], serde_json::json!({"nofile": 1024}));
        assert_eq!(run["suppress_log_output"], false);
    }

    #[test]
    fn yaml_loads_the_same_tree() {
        let yaml = "serial:\n  actions:\n    - run: {path: /bin/true, user: root}\n    - try:\n        action:\n          run: {path: /bin/false, user: root}\n";
        let a = Action::from_yaml(yaml).unwrap();
        let json = r#"{"serial":{"actions":[{"run":{"path":"/bin/true","user":"root"}},{"try":{"action":{"run":{"path":"/bin/false","user":"root"}}}}]}}"#;
        assert_eq!(a, Action::from_json(json).unwrap());
    }

    #[test]
    fn errors_name_the_path() {
        let e = err(
            r#"{"serial":{"actions":[{"run":{"path":"/a","user":"u"}},{"run":{"path":"/b","user":"u"}},{"run":{"user":"u"}}]}}"#,
        );
        assert_eq!(e, "serial.actions[2].run.path: required");
        let e = err(r#"{"timeout":{"action":{"run":{"path":"/a","user":"u"}}}}"#);
        assert_eq!(e, "timeout.timeout_ms: must be greater than 0");
        let e = err(r#"{"run":{"path":"/a","user":"u","args":"nope"}}"#);
        assert!(e.starts_with("run.args: invalid type"), "{e}");
        let e = err(r#"{"try":{}}"#);
        assert_eq!(e, "try.action: required");
        let e = err(r#"{"parallel":{"actions":[]}}"#);
        assert_eq!(e, "parallel.actions: must not be empty");
        let e = err(r#"{"parallel":{"actions":[null]}}"#);
        assert_eq!(e, "parallel.actions[0]: null action");
    }

    #[test]
    fn envelopes_need_exactly_one_known_key() {
        assert_eq!(err("{}"), "<root>: empty action envelope (inner-action)");
        assert!(err(
            r#"{"run":{"path":"/a","user":"u"},"try":{"action":{"run":{"path":"/a","user":"u"}}}}"#
        )
        .contains("exactly one key"));
        assert!(err(r#"{"explode":{}}"#).contains("unknown action type \"explode\""));
        assert!(err("[1]").contains("expected an action object"));
    }

    #[test]
    fn download_checksum_rules() {
        let base = |extra: &str| {
            format!(r#"{{"download":{{"from":"http://h/x","to":"/t","user":"u"{extra}}}}}"#)
        };
        assert!(Action::from_json(&base("")).is_ok());
        assert!(Action::from_json(
            &base(r#","checksum_algorithm":"SHA256","checksum_value":"ab"}"#).replace("}}}", "}}")
        )
        .is_ok());
        assert_eq!(
            err(&base(r#","checksum_algorithm":"md5""#)),
            "download.checksum_value: required with checksum_algorithm"
        );
        assert_eq!(
            err(&base(r#","checksum_value":"aa""#)),
            "download.checksum_algorithm: required with checksum_value"
        );
        assert!(err(&base(
            r#","checksum_algorithm":"crc","checksum_value":"aa""#
        ))
        .contains("invalid algorithm"));
        assert_eq!(
            err(r#"{"download":{"from":"ftp://h/x","to":"/t","user":"u"}}"#),
            "download.from: must be an http:// or https:// URL"
        );
    }

    #[test]
    fn deprecated_timeout_nanoseconds() {
        let a = Action::from_json(
            r#"{"timeout":{"timeout":2000000000,"action":{"run":{"path":"/a","user":"u"}}}}"#,
        )
        .unwrap();
        let Action::Timeout(t) = a else { panic!() };
        assert_eq!(t.timeout_ms, 2000);
    }
}
