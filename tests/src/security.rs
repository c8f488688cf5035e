//! What the escape tests stand on: a static probe for system calls busybox cannot make, files
//! streamed in with a chosen mode, and a container process's `/proc/self/status` fields.

use std::path::PathBuf;
use std::sync::OnceLock;

use garden_client::Client;

/// The probe (`tests/helpers/probe.rs`), compiled once per test process with rustc and
/// statically linked, so that it runs in any image.
pub fn probe_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("helpers/probe.rs");
            let out = crate::bin_dir().join("escape-probe");
            let tmp = crate::bin_dir().join(format!(".escape-probe.{}", std::process::id()));
            let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
            let status = std::process::Command::new(rustc)
                .args([
                    "--edition",
                    "2021",
                    "-O",
                    "-C",
                    "target-feature=+crt-static",
                    "-o",
                ])
                .arg(&tmp)
                .arg(&src)
                .status()
                .expect("run rustc");
            assert!(status.success(), "compile {}", src.display());
            // Atomic, so concurrent test binaries never see half a file.
            std::fs::rename(&tmp, &out).expect("place the probe");
            out
        })
        .clone()
}

/// Stream one file into `dir` of the container as `name` with `mode`, as `user`.
pub async fn stream_file(
    client: &Client,
    handle: &str,
    user: &str,
    dir: &str,
    name: &str,
    content: &[u8],
    mode: u32,
) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append_data(&mut header, name, content).unwrap();
    let tar = builder.into_inner().unwrap();
    client
        .stream_in(handle, user, dir, std::io::Cursor::new(tar))
        .await
        .expect("stream in");
}

/// Stream the probe into `/usr/local/bin/probe` (mode 0755).
pub async fn install_probe(client: &Client, handle: &str) {
    let bytes = std::fs::read(probe_binary()).unwrap();
    stream_file(
        client,
        handle,
        "root",
        "/usr/local/bin",
        "probe",
        &bytes,
        0o755,
    )
    .await;
}

/// `field` of a `/proc/<pid>/status` text, e.g. `CapEff`.
pub fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}
