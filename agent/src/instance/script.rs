//! The start script and environment of an app process (spec §6 step 3, §6.1), and the
//! conversions from the start message to Garden's network rules.

use std::collections::BTreeMap;

use garden_api::{IpRange, NetOutRule, PortRange};

use crate::protocol::{EgressRule, Service, StartMessage};

/// What the environment needs to know about the running instance.
pub struct EnvContext<'a> {
    pub message: &'a StartMessage,
    pub instance_id: &'a str,
    pub host_ip: &'a str,
    pub host_port: u16,
    pub container_port: u16,
    pub started_at: f64,
}

/// Single-quote `s` for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Double-quote `s` for sh, leaving `$` live (so `$PWD` expands) as the DEA did.
fn double_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `VCAP_SERVICES`: label → list of bindings with the documented keys only.
pub fn vcap_services(services: &[Service]) -> serde_json::Value {
    let mut by_label: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for s in services {
        let mut v = serde_json::json!({
            "name": s.name,
            "label": s.label,
            "tags": s.tags,
            "credentials": s.credentials,
            "syslog_drain_url": s.syslog_drain_url,
        });
        if let Some(p) = &s.plan {
            v["plan"] = serde_json::json!(p);
        }
        if let Some(p) = &s.plan_option {
            v["plan_option"] = p.clone();
        }
        by_label.entry(s.label.clone()).or_default().push(v);
    }
    serde_json::to_value(by_label).unwrap_or_default()
}

/// `DATABASE_URL` from the first service with a database URI, scheme rewritten.
pub fn database_url(services: &[Service]) -> Option<String> {
    services.iter().find_map(|s| {
        let uri = s.credentials.get("uri")?.as_str()?;
        let (scheme, rest) = uri.split_once("://")?;
        let scheme = match scheme {
            "mysql" | "mysql2" => "mysql2",
            "postgres" | "postgresql" => "postgres",
            "db2" | "informix" => "ibmdb",
            _ => return None,
        };
        Some(format!("{scheme}://{rest}"))
    })
}

fn utc(ts: f64) -> String {
    // `YYYY-MM-DD HH:MM:SS +0000` without a date library: civil from days (Hinnant).
    let secs = ts.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The `usage.time` format of stats.
pub fn format_time(ts: f64) -> String {
    utc(ts)
}

/// `VCAP_APPLICATION`: the message's object plus what only the agent knows.
pub fn vcap_application(ctx: &EnvContext) -> serde_json::Value {
    let mut v = match &ctx.message.vcap_application {
        serde_json::Value::Object(m) => serde_json::Value::Object(m.clone()),
        _ => serde_json::json!({}),
    };
    let started = utc(ctx.started_at);
    for (k, val) in [
        ("application_id", serde_json::json!(ctx.message.droplet)),
        ("instance_id", serde_json::json!(ctx.instance_id)),
        ("instance_index", serde_json::json!(ctx.message.index)),
        ("host", serde_json::json!("0.0.0.0")),
        ("port", serde_json::json!(ctx.container_port)),
        ("started_at", serde_json::json!(started)),
        (
            "started_at_timestamp",
            serde_json::json!(ctx.started_at as i64),
        ),
        ("start", serde_json::json!(started)),
        ("state_timestamp", serde_json::json!(ctx.started_at as i64)),
    ] {
        v[k] = val;
    }
    v
}

/// The `export` lines of §6.1: system variables, then the user's.
pub fn exports(ctx: &EnvContext) -> String {
    let m = ctx.message;
    let mut s = String::new();
    let mut quoted = |k: &str, v: &str| s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    quoted("VCAP_APPLICATION", &vcap_application(ctx).to_string());
    quoted("VCAP_SERVICES", &vcap_services(&m.services).to_string());
    if let Some(url) = database_url(&m.services) {
        quoted("DATABASE_URL", &url);
    }
    let ports = format!(
        "[{{\"external\":{},\"internal\":{}}}]",
        ctx.host_port, ctx.container_port
    );
    let system: Vec<(&str, String)> = vec![
        ("MEMORY_LIMIT", format!("{}m", m.limits.mem)),
        ("HOME", "$PWD/app".into()),
        ("TMPDIR", "$PWD/tmp".into()),
        ("VCAP_APP_HOST", "0.0.0.0".into()),
        ("VCAP_APP_PORT", ctx.container_port.to_string()),
        ("PORT", "$VCAP_APP_PORT".into()),
        ("CF_INSTANCE_INDEX", m.index.to_string()),
        ("CF_INSTANCE_IP", ctx.host_ip.into()),
        ("CF_INSTANCE_PORT", ctx.host_port.to_string()),
        (
            "CF_INSTANCE_ADDR",
            format!("{}:{}", ctx.host_ip, ctx.host_port),
        ),
        ("CF_INSTANCE_PORTS", ports),
    ];
    for (k, v) in system {
        s.push_str(&format!("export {k}={}\n", double_quote(&v)));
    }
    for (k, v) in m.env_pairs() {
        if is_name(&k) {
            s.push_str(&format!("export {k}={}\n", double_quote(&v)));
        }
    }
    s
}

/// A valid shell variable name (others cannot be exported and are skipped).
fn is_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The startup script run as vcap in /home/vcap: output goes to `logs/stdout.log` and
/// `logs/stderr.log` (what the directory server shows and a crash keeps).
pub fn start_script(ctx: &EnvContext, command: &str, post_setup_hook: Option<&str>) -> String {
    let mut s = String::from("umask 077\n");
    s.push_str(&exports(ctx));
    s.push_str("unset GEM_PATH\n");
    s.push_str(
        "if [ -d app/.profile.d ]; then\n  for i in app/.profile.d/*.sh; do\n    if [ -r \"$i\" ]; then . \"$i\"; fi\n  done\n  unset i\nfi\n",
    );
    if let Some(hook) = post_setup_hook {
        s.push_str(hook);
        s.push('\n');
    }
    s.push_str("DROPLET_BASE_DIR=$PWD\nmkdir -p logs tmp\ncd app\necho $$ >> ../run.pid\n");
    s.push_str(&format!(
        "exec sh -c {} >>\"$DROPLET_BASE_DIR/logs/stdout.log\" 2>>\"$DROPLET_BASE_DIR/logs/stderr.log\"\n",
        shell_quote(command)
    ));
    s
}

/// A hook script: the same environment, then the host file's text.
pub fn hook_script(ctx: &EnvContext, hook: &str) -> String {
    format!("umask 077\n{}{hook}\n", exports(ctx))
}

/// The start command of a droplet's `staging_info.yml`, if it names one.
pub fn staging_info_start_command(yaml: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(default)]
        start_command: Option<String>,
    }
    serde_yaml::from_str::<Info>(yaml)
        .ok()?
        .start_command
        .filter(|c| !c.trim().is_empty())
}

fn ip_range(dest: &str) -> Result<IpRange, String> {
    let bad = || format!("bad destination {dest:?}");
    if let Some((a, b)) = dest.split_once('-') {
        a.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
        b.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
        return Ok(IpRange {
            start: a.into(),
            end: b.into(),
        });
    }
    if let Some((a, n)) = dest.split_once('/') {
        let ip: std::net::Ipv4Addr = a.parse().map_err(|_| bad())?;
        let n: u32 = n.parse().map_err(|_| bad())?;
        if n > 32 {
            return Err(bad());
        }
        let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
        let start = u32::from(ip) & mask;
        let end = start | !mask;
        return Ok(IpRange {
            start: std::net::Ipv4Addr::from(start).to_string(),
            end: std::net::Ipv4Addr::from(end).to_string(),
        });
    }
    dest.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    Ok(IpRange {
        start: dest.into(),
        end: dest.into(),
    })
}

fn port_range(ports: &str) -> Result<PortRange, String> {
    let bad = || format!("bad ports {ports:?}");
    let (a, b) = ports.split_once('-').unwrap_or((ports, ports));
    Ok(PortRange {
        start: a.trim().parse().map_err(|_| bad())?,
        end: b.trim().parse().map_err(|_| bad())?,
    })
}

/// A controller's egress rule as Garden's NetOut rule.
pub fn net_out_rule(rule: &EgressRule) -> Result<NetOutRule, String> {
    let protocol = match rule.protocol.as_str() {
        "all" => garden_api::PROTOCOL_ALL,
        "tcp" => garden_api::PROTOCOL_TCP,
        "udp" => garden_api::PROTOCOL_UDP,
        "icmp" => garden_api::PROTOCOL_ICMP,
        p => return Err(format!("bad protocol {p:?}")),
    };
    let ports = match &rule.ports {
        Some(p) if !p.is_empty() => p
            .split(',')
            .map(port_range)
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    Ok(NetOutRule {
        protocol,
        networks: vec![ip_range(&rule.destination)?],
        ports,
        icmps: None,
        log: rule.log.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> StartMessage {
        serde_json::from_value(serde_json::json!({
            "droplet": "app-1", "name": "web", "stack": "busybox", "version": "v1",
            "limits": {"mem": 64, "disk": 128, "fds": 100}, "index": 2,
            "env": ["FOO=it's \"x\" $PWD", "1BAD=no"],
            "services": [{"name": "db", "label": "p-mysql", "credentials": {"uri": "mysql://u:p@h/d"}}],
            "vcap_application": {"space_id": "s"}
        }))
        .unwrap()
    }

    #[test]
    fn environment_follows_the_dea() {
        let m = message();
        let ctx = EnvContext {
            message: &m,
            instance_id: "iid",
            host_ip: "10.0.0.5",
            host_port: 61001,
            container_port: 61001,
            started_at: 0.0,
        };
        let e = exports(&ctx);
        assert!(e.contains("export MEMORY_LIMIT=\"64m\"\n"), "{e}");
        assert!(e.contains("export PORT=\"$VCAP_APP_PORT\"\n"), "{e}");
        assert!(
            e.contains("export CF_INSTANCE_ADDR=\"10.0.0.5:61001\"\n"),
            "{e}"
        );
        assert!(e.contains("export FOO=\"it's \\\"x\\\" $PWD\"\n"), "{e}");
        assert!(!e.contains("1BAD"), "{e}");
        assert!(
            e.contains("export DATABASE_URL='mysql2://u:p@h/d'\n"),
            "{e}"
        );
        let v = vcap_application(&ctx);
        assert_eq!(v["space_id"], "s");
        assert_eq!(v["instance_index"], 2);
        assert_eq!(v["started_at"], "1970-01-01 00:00:00 +0000");
        assert_eq!(vcap_services(&m.services)["p-mysql"][0]["name"], "db");
        assert!(start_script(&ctx, "echo 'hi'", None).contains("exec sh -c 'echo '\\''hi'\\'''"));
    }

    #[test]
    fn egress_rules_become_netout_rules() {
        let r = net_out_rule(&EgressRule {
            protocol: "tcp".into(),
            destination: "10.1.0.0/16".into(),
            ports: Some("80,8000-9000".into()),
            log: None,
        })
        .unwrap();
        assert_eq!(r.networks[0].start, "10.1.0.0");
        assert_eq!(r.networks[0].end, "10.1.255.255");
        assert_eq!(r.ports.len(), 2);
        assert_eq!(r.ports[1].end, 9000);
        assert!(net_out_rule(&EgressRule {
            protocol: "sctp".into(),
            destination: "1.2.3.4".into(),
            ports: None,
            log: None,
        })
        .is_err());
        assert_eq!(utc(1_400_000_000.0), "2014-05-13 16:53:20 +0000");
    }

    #[test]
    fn staging_info_names_the_start_command() {
        assert_eq!(
            staging_info_start_command("detected_buildpack: x\nstart_command: \"a b\"\n"),
            Some("a b".into())
        );
        assert_eq!(staging_info_start_command("detected_buildpack: x\n"), None);
        assert_eq!(staging_info_start_command("start_command: ''\n"), None);
    }
}
