//! The OCI bundles the peers (crun, runc) run.
//!
//! The rootfs is gardend's default one, built by the same code (`rootfs::ensure_busybox_rootfs`):
//! a static busybox with every applet linked, and the usual users. Every bundle shares that
//! rootfs through an absolute `root.path`, and differs only in the process it runs. config.json starts from the runtime's own
//! `spec` template (so each peer runs with its usual defaults: pid, ipc, uts, mount and
//! network namespaces, masked paths, default capabilities) and is then adjusted: no terminal,
//! our command, a writable root.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The host's static busybox: `/bin/busybox` from Debian's busybox-static.
pub fn find_busybox() -> Result<PathBuf> {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = PathBuf::from(p);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no busybox found in /bin or /usr/bin: install busybox-static (scripts/bench-deps.sh)")
}

/// The `spec` template of `runtime` (crun or runc), read from the file it writes.
pub fn spec_template(runtime: &Path, scratch: &Path) -> Result<Value> {
    std::fs::create_dir_all(scratch).with_context(|| format!("create {}", scratch.display()))?;
    let config = scratch.join("config.json");
    let _ = std::fs::remove_file(&config);
    let out = Command::new(runtime)
        .args(["spec", "--bundle"])
        .arg(scratch)
        .output()
        .with_context(|| format!("run {} spec", runtime.display()))?;
    if !out.status.success() {
        bail!(
            "{} spec failed: {}",
            runtime.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text =
        std::fs::read_to_string(&config).with_context(|| format!("read {}", config.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", config.display()))
}

/// Adjust a spec template to run `args` in `rootfs`, without a terminal, on a writable root.
pub fn adjust_spec(template: &Value, rootfs: &Path, args: &[&str]) -> Result<Value> {
    let mut spec = template.clone();
    let Some(process) = spec.get_mut("process").and_then(Value::as_object_mut) else {
        bail!("spec template has no process object");
    };
    process.insert("terminal".into(), Value::Bool(false));
    process.insert("args".into(), serde_json::json!(args));
    if let Some(env) = process.get_mut("env").and_then(Value::as_array_mut) {
        env.retain(|e| !e.as_str().is_some_and(|s| s.starts_with("TERM=")));
    }
    spec["root"] = serde_json::json!({ "path": rootfs, "readonly": false });
    spec["hostname"] = Value::String("bench".into());
    Ok(spec)
}

/// Write `<dir>/config.json` for `args` and return `dir`.
pub fn write_bundle(dir: &Path, template: &Value, rootfs: &Path, args: &[&str]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let spec = adjust_spec(template, rootfs, args)?;
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&spec).context("encode config.json")?;
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adjust_spec_sets_process_root_and_drops_term() {
        let template = json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": true, "args": ["sh"], "env": ["PATH=/bin", "TERM=xterm"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": true},
            "linux": {"namespaces": [{"type": "pid"}]}
        });
        let s = adjust_spec(&template, Path::new("/r/fs"), &["/bin/true"]).unwrap();
        assert_eq!(s["process"]["terminal"], json!(false));
        assert_eq!(s["process"]["args"], json!(["/bin/true"]));
        assert_eq!(s["process"]["env"], json!(["PATH=/bin"]));
        assert_eq!(s["process"]["cwd"], json!("/"));
        assert_eq!(s["root"], json!({"path": "/r/fs", "readonly": false}));
        assert_eq!(s["linux"], template["linux"]);
    }

    #[test]
    fn adjust_spec_rejects_a_template_without_process() {
        let err = adjust_spec(&json!({"root": {}}), Path::new("/r"), &["/bin/true"]).unwrap_err();
        assert!(err.to_string().contains("no process"), "{err}");
    }
}
