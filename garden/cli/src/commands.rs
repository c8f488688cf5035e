//! The plain request/response commands; `run` and the streams live in their own modules.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use garden_api::{
    BulkInfo, BulkMetrics, ContainerInfo, ContainerSpec, GardenError, IcmpControl, ImageRef,
    Limits, Metrics, NetOutRule, DISK_LIMIT_SCOPE_EXCLUSIVE, DISK_LIMIT_SCOPE_TOTAL,
};
use garden_client::Client;
use serde::Serialize;

use crate::cli::{Command, CreateArgs, DiskScope, ListArgs, NetOutArgs, PropertiesCommand};
use crate::format::{self, Table};
use crate::{errors, run, stream};

/// Runs one command; the result is the exit code.
pub async fn dispatch(client: Client, command: Command, json: bool) -> Result<i32> {
    match command {
        Command::Ping => {
            let started = Instant::now();
            client.ping().await?;
            if json {
                print_json(&serde_json::json!({ "ok": true }))?;
            } else {
                outln!(
                    "ok ({})",
                    format::duration(Duration::from_millis(started.elapsed().as_millis() as u64))
                );
            }
        }
        Command::Capacity => {
            let c = client.capacity().await?;
            if json {
                print_json(&c)?;
            } else {
                out!(
                    "{}",
                    format::fields(&[
                        ("memory", format::bytes(c.memory_in_bytes)),
                        ("disk", format::bytes(c.disk_in_bytes)),
                        (
                            "schedulable disk",
                            format::bytes(c.schedulable_disk_in_bytes)
                        ),
                        ("max containers", c.max_containers.to_string()),
                    ])
                );
            }
        }
        Command::Create(args) => {
            let progress = crate::progress::CreateProgress::start(args.image.as_deref(), json);
            let created = client.create(&container_spec(args)).await;
            progress.finish(created.as_ref().ok().map(String::as_str));
            let handle = created?;
            if json {
                print_json(&serde_json::json!({ "handle": handle }))?;
            } else {
                outln!("{handle}");
            }
        }
        Command::List(args) => list(&client, args, json).await?,
        Command::Info { handle, all } => {
            let info = client.info(&handle).await?;
            if json {
                print_json(&info)?;
            } else {
                out!("{}", describe_info(&handle, &info, all));
            }
        }
        Command::Destroy { handles } => return destroy(&client, handles).await,
        Command::Stop { handle, kill } => client.stop(&handle, kill).await?,
        Command::Run(args) => return run::run(&client, args).await,
        Command::Shell(args) => return run::shell(&client, args).await,
        Command::StreamIn(args) => stream::stream_in(&client, args).await?,
        Command::StreamOut(args) => stream::stream_out(&client, args).await?,
        Command::NetIn(args) => {
            let r = client
                .net_in(&args.handle, args.host_port, args.container_port)
                .await?;
            if json {
                print_json(&r)?;
            } else {
                outln!(
                    "host port {} -> container port {}",
                    r.host_port,
                    r.container_port
                );
            }
        }
        Command::NetOut(args) => {
            let handle = args.handle.clone();
            client.net_out(&handle, &net_out_rule(args)?).await?;
        }
        Command::Properties(cmd) => properties(&client, cmd, json).await?,
        Command::Metrics { handle } => {
            let m = client.metrics(&handle).await?;
            if json {
                print_json(&m)?;
            } else {
                out!("{}", describe_metrics(&m));
            }
        }
        Command::Limits { handle } => {
            let (memory, cpu, disk, bandwidth) = tokio::try_join!(
                client.current_memory_limits(&handle),
                client.current_cpu_limits(&handle),
                client.current_disk_limits(&handle),
                client.current_bandwidth_limits(&handle),
            )?;
            if json {
                print_json(&serde_json::json!({
                    "memory": memory, "cpu": cpu, "disk": disk, "bandwidth": bandwidth,
                }))?;
            } else {
                let disk_text = if disk.byte_hard == 0 && disk.inode_hard == 0 {
                    "unlimited".to_string()
                } else {
                    let scope = if disk.scope == DISK_LIMIT_SCOPE_EXCLUSIVE {
                        "exclusive"
                    } else {
                        "total"
                    };
                    format!(
                        "{} ({scope}), inodes {}",
                        format::limit_bytes(disk.byte_hard),
                        unlimited_count(disk.inode_hard)
                    )
                };
                let bw = if bandwidth.rate == 0 {
                    "unlimited".to_string()
                } else {
                    format!(
                        "{}/s, burst {}",
                        format::bytes(bandwidth.rate),
                        format::bytes(bandwidth.burst)
                    )
                };
                let shares = cpu.shares();
                out!(
                    "{}",
                    format::fields(&[
                        ("memory", format::limit_bytes(memory.limit_in_bytes)),
                        (
                            "cpu shares",
                            if shares == 0 {
                                "default".into()
                            } else {
                                shares.to_string()
                            }
                        ),
                        ("disk", disk_text),
                        ("bandwidth", bw),
                    ])
                );
            }
        }
        Command::BulkInfo { handles } => {
            let handles = all_if_empty(&client, handles).await?;
            let infos = client.bulk_info(&handles).await?;
            if json {
                print_json(&infos)?;
            } else {
                out!("{}", info_table(&infos));
            }
        }
        Command::BulkMetrics { handles } => {
            let handles = all_if_empty(&client, handles).await?;
            let metrics = client.bulk_metrics(&handles).await?;
            if json {
                print_json(&metrics)?;
            } else {
                out!("{}", metrics_table(&metrics));
            }
        }
        Command::GraceTime { handle, duration } => client.set_grace_time(&handle, duration).await?,
    }
    Ok(0)
}

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn container_spec(a: CreateArgs) -> ContainerSpec {
    let mut limits = Limits::default();
    limits.memory_limits.limit_in_bytes = a.memory.unwrap_or(0);
    limits.cpu_limits.weight = a.cpu_shares.unwrap_or(0);
    limits.pid_limits.max = a.pids.unwrap_or(0);
    limits.disk_limits.byte_hard = a.disk.unwrap_or(0);
    limits.disk_limits.scope = match a.disk_scope {
        DiskScope::Total => DISK_LIMIT_SCOPE_TOTAL,
        DiskScope::Exclusive => DISK_LIMIT_SCOPE_EXCLUSIVE,
    };
    ContainerSpec {
        handle: a.handle.unwrap_or_default(),
        grace_time: a
            .grace_time
            .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
            .unwrap_or(0),
        rootfs: a.rootfs.unwrap_or_default(),
        image: ImageRef {
            uri: a.image.unwrap_or_default(),
            username: a.image_username.unwrap_or_default(),
            password: a.image_password.unwrap_or_default(),
        },
        bind_mounts: a.bind_mount,
        network: a.network.unwrap_or_default(),
        properties: a.property.into_iter().collect(),
        env: a.env,
        privileged: a.privileged,
        limits,
        ..Default::default()
    }
}

fn net_out_rule(a: NetOutArgs) -> Result<NetOutRule> {
    use garden_api::{PROTOCOL_ICMP, PROTOCOL_ICMPV6, PROTOCOL_TCP, PROTOCOL_UDP};
    if !a.port.is_empty() && a.protocol != PROTOCOL_TCP && a.protocol != PROTOCOL_UDP {
        anyhow::bail!("--port needs --protocol tcp or udp");
    }
    if a.icmp_type.is_some() && a.protocol != PROTOCOL_ICMP && a.protocol != PROTOCOL_ICMPV6 {
        anyhow::bail!("--icmp-type needs --protocol icmp or icmpv6");
    }
    Ok(NetOutRule {
        protocol: a.protocol,
        networks: a.network,
        ports: a.port,
        icmps: a.icmp_type.map(|t| IcmpControl {
            icmp_type: t,
            code: a.icmp_code,
        }),
        log: a.log,
    })
}

async fn list(client: &Client, args: ListArgs, json: bool) -> Result<()> {
    let mut filter = args.filters;
    if args.all {
        filter.push(("garden.state".into(), "all".into()));
    }
    let handles = client.list(&filter).await?;
    if json {
        return print_json(&handles);
    }
    if args.quiet || handles.is_empty() {
        for h in &handles {
            outln!("{h}");
        }
        return Ok(());
    }
    match client.bulk_info(&handles).await {
        Ok(infos) => out!("{}", info_table(&infos)),
        // The handles are what was asked for; the table is a bonus.
        Err(e) => {
            tracing::debug!("bulk info failed, printing handles only: {e}");
            for h in &handles {
                outln!("{h}");
            }
        }
    }
    Ok(())
}

/// Destroys every handle even if some fail; each failure gets its own line.
async fn destroy(client: &Client, handles: Vec<String>) -> Result<i32> {
    let mut set = tokio::task::JoinSet::new();
    for h in handles {
        let c = client.clone();
        set.spawn(async move {
            let r = c.destroy(&h).await;
            (h, r)
        });
    }
    let mut failed = false;
    while let Some(joined) = set.join_next().await {
        let (handle, r) = joined?;
        if let Err(e) = r {
            let msg = errors::client_error(&e, None);
            if msg.contains(&handle) {
                eprintln!("gardenctl: {msg}");
            } else {
                eprintln!("gardenctl: destroy {handle}: {msg}");
            }
            failed = true;
        }
    }
    Ok(if failed { 1 } else { 0 })
}

async fn properties(client: &Client, cmd: PropertiesCommand, json: bool) -> Result<()> {
    match cmd {
        PropertiesCommand::List { handle } => {
            let props = client.properties(&handle).await?;
            if json {
                print_json(&props)?;
            } else {
                out!("{}", properties_table(&props));
            }
        }
        PropertiesCommand::Get { handle, key } => {
            let value = client.property(&handle, &key).await?;
            if json {
                print_json(&serde_json::json!({ "value": value }))?;
            } else {
                outln!("{value}");
            }
        }
        PropertiesCommand::Set { handle, key, value } => {
            client.set_property(&handle, &key, &value).await?
        }
        PropertiesCommand::Rm { handle, keys } => {
            for key in keys {
                client.remove_property(&handle, &key).await?;
            }
        }
    }
    Ok(())
}

async fn all_if_empty(client: &Client, handles: Vec<String>) -> Result<Vec<String>> {
    if handles.is_empty() {
        Ok(client.list(&[]).await?)
    } else {
        Ok(handles)
    }
}

fn unlimited_count(n: u64) -> String {
    if n == 0 {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

fn properties_table(props: &BTreeMap<String, String>) -> String {
    let mut t = Table::new(["KEY", "VALUE"]);
    for (k, v) in props {
        t.row([k.as_str(), v.as_str()]);
    }
    t.render()
}

/// Server-side bookkeeping keys, hidden from `info` unless asked for.
fn is_internal(key: &str) -> bool {
    key.starts_with("garden.") || key.starts_with("kawasaki.")
}

fn describe_info(handle: &str, info: &ContainerInfo, all: bool) -> String {
    let ports = info
        .mapped_ports
        .iter()
        .flatten()
        .map(|p| format!("{}->{}", p.host_port, p.container_port))
        .collect::<Vec<_>>()
        .join(", ");
    let mut pairs = vec![
        ("handle", handle.to_string()),
        ("state", info.state.clone()),
        ("container ip", info.container_ip.clone()),
        ("host ip", info.host_ip.clone()),
        ("external ip", info.external_ip.clone()),
        ("path", info.container_path.clone()),
        (
            "processes",
            info.process_ids
                .iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("ports", ports),
    ];
    if !info.container_ipv6.is_empty() {
        pairs.insert(3, ("container ipv6", info.container_ipv6.clone()));
    }
    if let Some(events) = info.events.as_ref().filter(|e| !e.is_empty()) {
        pairs.push(("events", events.join(", ")));
    }
    let mut out = format::fields(&pairs);
    let props: BTreeMap<String, String> = info
        .properties
        .iter()
        .flatten()
        .filter(|(k, _)| all || !is_internal(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !props.is_empty() {
        out.push_str("properties:\n");
        let width = props.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &props {
            out.push_str(&format!("  {k:<width$} = {v}\n"));
        }
    }
    out
}

fn describe_metrics(m: &Metrics) -> String {
    let mem = &m.memory_stat;
    let network = match &m.network_stat {
        Some(n) => format!(
            "rx {}, tx {}",
            format::bytes(n.rx_bytes),
            format::bytes(n.tx_bytes)
        ),
        None => "unknown".into(),
    };
    format::fields(&[
        ("memory", format::bytes(mem.total_usage_toward_limit)),
        ("  rss", format::bytes(mem.total_rss)),
        ("  cache", format::bytes(mem.total_cache)),
        ("  limit", format::bytes(mem.hierarchical_memory_limit)),
        (
            "cpu",
            format!(
                "{} (user {}, system {})",
                format::cpu_seconds(m.cpu_stat.usage),
                format::cpu_seconds(m.cpu_stat.user),
                format::cpu_seconds(m.cpu_stat.system)
            ),
        ),
        ("cpu entitlement", m.cpu_entitlement.to_string()),
        (
            "pids",
            format!(
                "{} / {}",
                m.pid_stat.current,
                unlimited_count(m.pid_stat.max)
            ),
        ),
        (
            "disk",
            format!(
                "{} total, {} exclusive",
                format::bytes(m.disk_stat.total_bytes_used),
                format::bytes(m.disk_stat.exclusive_bytes_used)
            ),
        ),
        ("network", network),
        (
            "age",
            format::duration(Duration::from_secs(m.age / 1_000_000_000)),
        ),
    ])
}

fn entry_error(err: &Option<garden_api::ErrorBody>) -> String {
    err.as_ref()
        .map(|b| errors::garden_error(&GardenError::from_body(b.clone())))
        .unwrap_or_default()
}

fn info_table(infos: &BulkInfo) -> String {
    let with_errors = infos.values().any(|e| e.err.is_some());
    let mut header = vec!["HANDLE", "STATE", "IP", "PROCESSES", "PORTS"];
    if with_errors {
        header.push("ERROR");
    }
    let mut t = Table::new(header);
    for (handle, e) in infos {
        let i = &e.info;
        let mut row = vec![
            handle.clone(),
            i.state.clone(),
            i.container_ip.clone(),
            i.process_ids.as_ref().map_or(0, Vec::len).to_string(),
            i.mapped_ports
                .iter()
                .flatten()
                .map(|p| format!("{}->{}", p.host_port, p.container_port))
                .collect::<Vec<_>>()
                .join(","),
        ];
        if with_errors {
            row.push(entry_error(&e.err));
        }
        t.row(row);
    }
    t.render()
}

fn metrics_table(metrics: &BulkMetrics) -> String {
    let with_errors = metrics.values().any(|e| e.err.is_some());
    let mut header = vec!["HANDLE", "MEMORY", "CPU", "PIDS", "DISK", "AGE"];
    if with_errors {
        header.push("ERROR");
    }
    let mut t = Table::new(header);
    for (handle, e) in metrics {
        let m = &e.metrics;
        let ok = e.err.is_none();
        let cell = |s: String| if ok { s } else { String::new() };
        let mut row = vec![
            handle.clone(),
            cell(format::bytes(m.memory_stat.total_usage_toward_limit)),
            cell(format::cpu_seconds(m.cpu_stat.usage)),
            cell(m.pid_stat.current.to_string()),
            cell(format::bytes(m.disk_stat.total_bytes_used)),
            cell(format::duration(Duration::from_secs(m.age / 1_000_000_000))),
        ];
        if with_errors {
            row.push(entry_error(&e.err));
        }
        t.row(row);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn create_args(args: &[&str]) -> CreateArgs {
        let cli =
            crate::cli::Cli::try_parse_from(["gardenctl", "create"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Create(a) => a,
            _ => unreachable!("parsed create"),
        }
    }

    #[test]
    fn create_spec_from_flags() {
        let spec = container_spec(create_args(&[
            "--handle",
            "web",
            "--memory",
            "64M",
            "--cpu-shares",
            "512",
            "--pids",
            "100",
            "--grace-time",
            "30s",
            "--image",
            "docker:///busybox",
            "-p",
            "a=b",
            "-e",
            "X=1",
            "--privileged",
        ]));
        assert_eq!(spec.handle, "web");
        assert_eq!(spec.limits.memory_limits.limit_in_bytes, 64 << 20);
        assert_eq!(spec.limits.cpu_limits.weight, 512);
        assert_eq!(spec.limits.pid_limits.max, 100);
        assert_eq!(spec.grace_time, 30_000_000_000);
        assert_eq!(spec.image.uri, "docker:///busybox");
        assert_eq!(spec.properties.get("a").map(String::as_str), Some("b"));
        assert_eq!(spec.env, ["X=1"]);
        assert!(spec.privileged);
        // Nothing given -> the spec the Go client sends for ContainerSpec{}.
        assert_eq!(container_spec(create_args(&[])), ContainerSpec::default());
    }

    #[test]
    fn net_out_rule_checks_flag_combinations() {
        let parse = |args: &[&str]| {
            let cli =
                crate::cli::Cli::try_parse_from(["gardenctl", "net-out", "h"].iter().chain(args))
                    .unwrap();
            match cli.command {
                Command::NetOut(a) => net_out_rule(a),
                _ => unreachable!("parsed net-out"),
            }
        };
        let rule = parse(&[
            "--protocol",
            "tcp",
            "--network",
            "10.0.0.0/8",
            "--port",
            "443",
            "--log",
        ])
        .unwrap();
        assert_eq!(rule.protocol, garden_api::PROTOCOL_TCP);
        assert_eq!(rule.networks[0].end, "10.255.255.255");
        assert_eq!(rule.ports[0].start, 443);
        assert!(rule.log);
        assert!(parse(&["--port", "80"])
            .unwrap_err()
            .to_string()
            .contains("tcp or udp"));
        assert!(parse(&["--protocol", "tcp", "--icmp-type", "8"]).is_err());
        let icmp = parse(&["--protocol", "icmp", "--icmp-type", "8", "--icmp-code", "0"]).unwrap();
        assert_eq!(
            icmp.icmps,
            Some(IcmpControl {
                icmp_type: 8,
                code: Some(0)
            })
        );
    }

    #[test]
    fn info_hides_internal_properties() {
        let info = ContainerInfo {
            state: "active".into(),
            properties: Some(
                [
                    ("app".into(), "web".into()),
                    ("garden.state".into(), "created".into()),
                ]
                .into(),
            ),
            process_ids: Some(vec!["p1".into(), "p2".into()]),
            ..Default::default()
        };
        let text = describe_info("h", &info, false);
        assert!(text.contains("state:        active"), "{text}");
        assert!(text.contains("processes:    p1, p2"), "{text}");
        assert!(text.contains("app = web"), "{text}");
        assert!(!text.contains("garden.state"), "{text}");
        assert!(describe_info("h", &info, true).contains("garden.state"));
    }

    #[test]
    fn bulk_table_shows_errors_only_when_there_are_some() {
        use garden_api::ContainerInfoEntry;
        let ok = ContainerInfoEntry {
            info: ContainerInfo {
                state: "active".into(),
                container_ip: "10.254.0.2".into(),
                ..Default::default()
            },
            err: None,
        };
        let mut infos: BulkInfo = [("a".to_string(), ok)].into();
        assert_eq!(
            info_table(&infos),
            "HANDLE  STATE   IP          PROCESSES  PORTS\na       active  10.254.0.2  0\n"
        );
        let body = GardenError::container_not_found("b").to_body();
        infos.insert(
            "b".into(),
            ContainerInfoEntry {
                info: ContainerInfo::default(),
                err: Some(body),
            },
        );
        let text = info_table(&infos);
        assert!(text.lines().next().unwrap().ends_with("ERROR"), "{text}");
        assert!(text.contains("container not found: b"), "{text}");
    }
}
