//! Removal of the iptables chains a stopped gardend leaves behind.
//!
//! gardend keeps its shared chains (`gd-<tag>-input`, `-fwd`, `-pre`, `-out`, ...) and the
//! jumps to them from the built-in chains across restarts, so that containers outlive it; they
//! are cleaned when an instance of the same name starts again. Each bench run uses a fresh
//! instance name (`bench-<pid>`), so without this every run would leave a set of jumps behind,
//! and every later loopback packet on the host would traverse them (they showed up as the top
//! kernel symbol, `nft_do_chain`, in a profile of the stdout stream).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// gardend's tag for an instance (its cgroup parent): five hex digits of FNV-1a. gardend names
/// its chains `gd-<tag>-...` and its links `g<tag>...`.
pub fn instance_tag(instance: &str) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in instance.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    format!("{:05x}", h & 0xfffff)
}

/// An `iptables-restore --noflush` script removing every chain whose name starts with `prefix`
/// and every rule elsewhere that jumps or goes to one, from `iptables-save` output. `None` when
/// there is nothing to remove.
#[cfg(test)]
pub fn removal_script(save: &str, prefix: &str) -> Option<String> {
    removal_script_keeping(save, prefix, &[])
}

/// As `removal_script`, but chains named in `keep` (and the rules jumping to them) stay: the
/// shared chains a CNI plugin or netavark found already there when the bench started.
pub fn removal_script_keeping(save: &str, prefix: &str, keep: &[String]) -> Option<String> {
    let ours = |chain: &str| chain.starts_with(prefix) && !keep.iter().any(|k| k == chain);
    let mut script = String::new();
    let mut table: Option<&str> = None;
    let mut own: Vec<&str> = vec![];
    let mut deletes: Vec<String> = vec![];
    for line in save.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name);
            own.clear();
            deletes.clear();
        } else if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or("");
            if ours(chain) {
                own.push(chain);
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut words = rule.split_whitespace();
            let chain = words.next().unwrap_or("");
            let mut targets_own = false;
            let mut prev = "";
            for w in words {
                if (prev == "-j" || prev == "-g") && ours(w) {
                    targets_own = true;
                }
                prev = w;
            }
            if targets_own && !ours(chain) {
                deletes.push(format!("-D {rule}"));
            }
        } else if line == "COMMIT" {
            if let Some(t) = table {
                if !own.is_empty() || !deletes.is_empty() {
                    script.push_str(&format!("*{t}\n"));
                    for d in &deletes {
                        script.push_str(d);
                        script.push('\n');
                    }
                    for c in &own {
                        script.push_str(&format!("-F {c}\n"));
                    }
                    for c in &own {
                        script.push_str(&format!("-X {c}\n"));
                    }
                    script.push_str("COMMIT\n");
                }
            }
            table = None;
        }
    }
    (!script.is_empty()).then_some(script)
}

/// Remove the chains of gardend instance `instance` (see the module doc). Returns how many
/// chains were removed; `Ok(0)` when iptables is not installed or nothing is left.
pub fn remove_instance_chains(instance: &str) -> Result<usize> {
    remove_chains(&format!("gd-{}-", instance_tag(instance)), &[])
}

/// `iptables-save`'s output; `None` when iptables is not installed.
fn iptables_save() -> Result<Option<String>> {
    match Command::new("iptables-save").stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
        }
        Ok(out) => bail!("iptables-save failed: {}", out.status),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("run iptables-save"),
    }
}

/// The chains (any table) whose name starts with `prefix`, now.
pub fn chains_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let Some(save) = iptables_save()? else {
        return Ok(vec![]);
    };
    Ok(save
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|d| d.split_whitespace().next())
        .filter(|c| c.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// Remove the chains starting with `prefix` except those in `keep`, and the rules jumping to
/// them. Returns how many chains were removed.
pub fn remove_chains(prefix: &str, keep: &[String]) -> Result<usize> {
    let Some(save) = iptables_save()? else {
        return Ok(0);
    };
    let Some(script) = removal_script_keeping(&save, prefix, keep) else {
        return Ok(0);
    };
    let chains = script.lines().filter(|l| l.starts_with("-X ")).count();
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run iptables-restore")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(script.as_bytes())
        .context("write to iptables-restore")?;
    let out = child
        .wait_with_output()
        .context("wait for iptables-restore")?;
    if !out.status.success() {
        bail!(
            "iptables-restore of the removal of {prefix}* failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(chains)
}

/// Delete network interface `name` if it exists (a bridge a CNI plugin left behind).
pub fn delete_link(name: &str) -> Result<()> {
    if !std::path::Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    let out = Command::new("ip")
        .args(["link", "del", name])
        .output()
        .context("run ip link del")?;
    if !out.status.success() {
        bail!(
            "ip link del {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_fnv1a_low_20_bits() {
        // FNV-1a 32 of "" is the offset basis 0x811c9dc5; of "a" it is 0xe40c292c.
        assert_eq!(instance_tag(""), "c9dc5");
        assert_eq!(instance_tag("a"), "c292c");
        assert_eq!(instance_tag("bench-1").len(), 5);
    }

    const SAVE: &str = "\
# Generated by iptables-save
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:gd-aaaaa-input - [0:0]
:gd-aaaaa-fwd - [0:0]
:gd-bbbbb-input - [0:0]
-A INPUT -j gd-bbbbb-input
-A INPUT -j gd-aaaaa-input
-A FORWARD -j gd-aaaaa-fwd
-A gd-aaaaa-input -i gaaaaab+ -j REJECT --reject-with icmp-host-prohibited
-A gd-aaaaa-fwd -o gaaaaab+ -j gd-aaaaa-input
COMMIT
*nat
:OUTPUT ACCEPT [0:0]
:gd-bbbbb-out - [0:0]
-A OUTPUT -j gd-bbbbb-out
COMMIT
";

    #[test]
    fn removal_script_drops_own_chains_and_the_jumps_to_them_only() {
        let script = removal_script(SAVE, "gd-aaaaa-").unwrap();
        assert_eq!(
            script,
            "*filter\n\
             -D INPUT -j gd-aaaaa-input\n\
             -D FORWARD -j gd-aaaaa-fwd\n\
             -F gd-aaaaa-input\n\
             -F gd-aaaaa-fwd\n\
             -X gd-aaaaa-input\n\
             -X gd-aaaaa-fwd\n\
             COMMIT\n"
        );
    }

    #[test]
    fn removal_script_covers_every_table_of_the_instance() {
        let script = removal_script(SAVE, "gd-bbbbb-").unwrap();
        assert!(script.contains(
            "*filter\n-D INPUT -j gd-bbbbb-input\n-F gd-bbbbb-input\n-X gd-bbbbb-input\nCOMMIT\n"
        ));
        assert!(script.contains(
            "*nat\n-D OUTPUT -j gd-bbbbb-out\n-F gd-bbbbb-out\n-X gd-bbbbb-out\nCOMMIT\n"
        ));
    }

    #[test]
    fn chains_found_at_start_are_kept() {
        let save = "*nat\n:POSTROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-MASQ - [0:0]\n\
                    :CNI-abc - [0:0]\n-A POSTROUTING -j CNI-HOSTPORT-MASQ\n\
                    -A POSTROUTING -s 10.0.0.2/32 -j CNI-abc\nCOMMIT\n";
        let keep = vec!["CNI-HOSTPORT-MASQ".to_string()];
        let script = removal_script_keeping(save, "CNI-", &keep).unwrap();
        assert_eq!(
            script,
            "*nat\n-D POSTROUTING -s 10.0.0.2/32 -j CNI-abc\n-F CNI-abc\n-X CNI-abc\nCOMMIT\n"
        );
        assert!(removal_script_keeping(
            save,
            "CNI-",
            &["CNI-HOSTPORT-MASQ".into(), "CNI-abc".into()]
        )
        .is_none());
    }

    #[test]
    fn nothing_to_remove_gives_none() {
        assert_eq!(removal_script(SAVE, "gd-ccccc-"), None);
        assert_eq!(removal_script("", "gd-aaaaa-"), None);
    }
}
