//! Checking a `task.<uuid>.run` request and turning it into the executor's run info.

use executor::action::{Action, DownloadAction, EnvironmentVariable, RunAction, SerialAction};
use executor::container::RunInfo;
use executor::log::LogConfig;

use crate::protocol::{TaskRun, MAX_DISK_MB, MAX_MEMORY_MB};
use crate::resources::Amount;

/// Log source of the task's command; its output is the task's stdout/stderr.
pub const SOURCE_COMMAND: &str = "TASK";
/// Log source of the install script; its output goes into the task's output too.
pub const SOURCE_INSTALL: &str = "INSTALL";
/// Log source of the droplet download (not part of the task's output).
pub const SOURCE_DOWNLOAD: &str = "DOWNLOAD";
/// Root log source of the task's container (the executor's own messages).
pub const SOURCE_CELL: &str = "CELL";

/// Longest task timeout accepted (a week).
pub const MAX_TIMEOUT_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// The executor container guid (and Garden handle, and log guid) of a task.
pub fn container_guid(task_id: &str) -> String {
    format!("task-{task_id}")
}

/// What a valid request reserves.
pub fn amount(run: &TaskRun) -> Amount {
    Amount {
        memory_mb: run.limits.mem,
        disk_mb: run.limits.disk,
    }
}

/// The checks a run request must pass before anything is reserved; `capacity` is the agent's
/// whole capacity (a task that could never fit is refused instead of waiting forever).
pub fn validate(run: &TaskRun, known_stack: bool, capacity: Amount) -> Result<(), String> {
    let id = &run.task_id;
    crate::protocol::check_task_id(id)?;
    if !known_stack {
        return Err(format!("unknown stack {:?}", run.stack));
    }
    if run.command.trim().is_empty() {
        return Err("command is empty".into());
    }
    let l = run.limits;
    if l.mem == 0 || l.mem > MAX_MEMORY_MB {
        return Err(format!(
            "limits.mem {} out of range (1..={MAX_MEMORY_MB} MB)",
            l.mem
        ));
    }
    if l.disk > MAX_DISK_MB {
        return Err(format!(
            "limits.disk {} out of range (0..={MAX_DISK_MB} MB)",
            l.disk
        ));
    }
    if l.mem > capacity.memory_mb {
        return Err(format!(
            "limits.mem {} MB exceeds this agent's memory capacity of {} MB",
            l.mem, capacity.memory_mb
        ));
    }
    if l.disk > capacity.disk_mb {
        return Err(format!(
            "limits.disk {} MB exceeds this agent's disk capacity of {} MB",
            l.disk, capacity.disk_mb
        ));
    }
    if let Some(t) = run.timeout {
        if !(t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS) {
            return Err(format!(
                "timeout {t} out of range (0..={MAX_TIMEOUT_SECS} s)"
            ));
        }
    }
    if let Some(sha1) = &run.sha1 {
        if sha1.len() != 40 || !sha1.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("sha1 {sha1:?} is not 40 hex digits"));
        }
        if run.droplet_uri.is_none() {
            return Err("sha1 given without droplet_uri".into());
        }
    }
    if let Some(uri) = &run.droplet_uri {
        match url::Url::parse(uri) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => {
                return Err(format!(
                    "droplet_uri scheme {:?} is not http(s)",
                    u.scheme()
                ))
            }
            Err(e) => return Err(format!("droplet_uri {uri:?}: {e}")),
        }
    }
    for e in &run.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(format!("env entry {e:?} is not NAME=value")),
        }
    }
    Ok(())
}

fn shell(script: &str, input: Option<&str>, source: &str) -> Action {
    let mut args = vec!["-c".to_string(), script.to_string(), "task".to_string()];
    args.extend(input.map(str::to_string));
    Action::Run(RunAction {
        path: "/bin/sh".into(),
        args,
        dir: "/home/vcap".into(),
        user: "vcap".into(),
        log_source: source.into(),
        ..Default::default()
    })
}

/// The container's run: download the droplet into /home/vcap (setup), then the install
/// script and the command, each `sh -c` as vcap in /home/vcap with the input as `$1`.
pub fn run_info(run: &TaskRun, rootfs: &str) -> RunInfo {
    let setup = run.droplet_uri.as_ref().map(|uri| {
        Action::Download(DownloadAction {
            from: uri.clone(),
            to: "/home/vcap".into(),
            cache_key: run.sha1.clone().unwrap_or_default(),
            user: "vcap".into(),
            artifact: "droplet".into(),
            log_source: SOURCE_DOWNLOAD.into(),
            checksum_algorithm: if run.sha1.is_some() {
                "sha1".into()
            } else {
                String::new()
            },
            checksum_value: run.sha1.clone().unwrap_or_default(),
        })
    });
    let input = run.input.as_deref();
    let mut steps = Vec::new();
    if let Some(script) = &run.install_script {
        steps.push(shell(script, input, SOURCE_INSTALL));
    }
    steps.push(shell(&run.command, input, SOURCE_COMMAND));
    let action = if steps.len() == 1 {
        steps.pop()
    } else {
        Some(Action::Serial(SerialAction {
            actions: steps,
            log_source: String::new(),
        }))
    };
    let var = |name: &str, value: &str| EnvironmentVariable {
        name: name.into(),
        value: value.into(),
    };
    let mut env = vec![var("HOME", "/home/vcap"), var("TASK_ID", &run.task_id)];
    if let Some(input) = input {
        env.push(var("TASK_INPUT", input));
    }
    env.extend(
        run.env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| var(k, v)),
    );
    RunInfo {
        rootfs: rootfs.to_string(),
        env,
        setup,
        action,
        log_config: LogConfig {
            guid: container_guid(&run.task_id),
            index: 0,
            source_name: SOURCE_CELL.into(),
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TaskLimits;

    fn run() -> TaskRun {
        serde_json::from_str(
            r#"{"task_id":"t-1","stack":"busybox","command":"echo hi","limits":{"mem":64}}"#,
        )
        .unwrap()
    }

    const CAP: Amount = Amount {
        memory_mb: 1024,
        disk_mb: 4096,
    };

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        validate(&run(), true, CAP).unwrap();
        type Change = Box<dyn Fn(&mut TaskRun)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|r| r.task_id = "a/b".into()), "task_id"),
            (Box::new(|r| r.task_id = String::new()), "task_id"),
            (Box::new(|r| r.command = " ".into()), "command"),
            (
                Box::new(|r| r.limits = TaskLimits { mem: 0, disk: 0 }),
                "limits.mem",
            ),
            (Box::new(|r| r.limits.mem = 2048), "capacity"),
            (Box::new(|r| r.limits.disk = u64::MAX), "limits.disk"),
            (Box::new(|r| r.timeout = Some(f64::NAN)), "timeout"),
            (Box::new(|r| r.timeout = Some(-1.0)), "timeout"),
            (Box::new(|r| r.sha1 = Some("xyz".into())), "sha1"),
            (
                Box::new(|r| r.droplet_uri = Some("file:///etc/passwd".into())),
                "scheme",
            ),
            (Box::new(|r| r.env = vec!["NOEQUALS".into()]), "env"),
        ];
        for (change, word) in cases {
            let mut r = run();
            change(&mut r);
            let e = validate(&r, true, CAP).unwrap_err();
            assert!(e.contains(word), "{e:?} should mention {word}");
        }
        assert!(validate(&run(), false, CAP)
            .unwrap_err()
            .contains("unknown stack"));
    }

    #[test]
    fn run_info_downloads_then_installs_then_runs_with_the_input() {
        let mut r = run();
        r.install_script = Some("touch x".into());
        r.input = Some("in put".into());
        r.droplet_uri = Some("http://127.0.0.1:1/d.tgz".into());
        r.sha1 = Some("a".repeat(40));
        r.env = vec!["A=b=c".into()];
        let info = run_info(&r, "/rootfs");
        assert_eq!(info.rootfs, "/rootfs");
        assert_eq!(info.log_config.guid, "task-t-1");
        let Some(Action::Download(d)) = &info.setup else {
            panic!("no download")
        };
        assert_eq!((d.to.as_str(), d.user.as_str()), ("/home/vcap", "vcap"));
        assert_eq!(d.checksum_algorithm, "sha1");
        let Some(Action::Serial(s)) = &info.action else {
            panic!("no serial")
        };
        let Action::Run(cmd) = &s.actions[1] else {
            panic!("no run")
        };
        assert_eq!(cmd.args, ["-c", "echo hi", "task", "in put"]);
        assert_eq!(
            (cmd.user.as_str(), cmd.dir.as_str()),
            ("vcap", "/home/vcap")
        );
        assert_eq!(cmd.log_source, SOURCE_COMMAND);
        assert!(info
            .env
            .iter()
            .any(|e| e.name == "TASK_INPUT" && e.value == "in put"));
        assert!(info.env.iter().any(|e| e.name == "A" && e.value == "b=c"));
        info.action.as_ref().unwrap().validate().unwrap();
        info.setup.as_ref().unwrap().validate().unwrap();
    }
}
