//! Netfilter rules through `iptables-restore --noflush`: every table a change touches is one
//! kernel transaction, so it lands completely or not at all.
//!
//! Layout (T = this gardend's tag):
//! - filter `FORWARD -> gd-T-fwd`: per container `-i <gateway if> -s <ip> -g gd-T-<id>`; the
//!   container chain accepts its own subnet, then NetOut rules (each new one prepended), then
//!   goes to `gd-T-default` (established traffic, DNS servers, REJECT per `--deny-network`).
//!   A routed container from the pool gets its chain with its first NetOut rule; until then
//!   `-i g<tag>+ -g gd-T-default` below the per-container jumps covers it. Traffic towards
//!   containers is accepted at the end of `gd-T-fwd`.
//! - filter `INPUT -> gd-T-input`: containers reaching the host, rejected unless host access
//!   is allowed.
//! - nat `PREROUTING`/`OUTPUT -> gd-T-pre`/`gd-T-out -> gd-T-<id>`: NetIn DNAT rules; the
//!   container's nat chain is made by its first NetIn.
//! - nat `POSTROUTING -> gd-T-post`: MASQUERADE for traffic leaving the pool (one rule for
//!   every container from the pool, one per container of a static subnet outside it), and for
//!   loopback-sourced traffic DNATed towards a container.
//!
//! So a routed container from the pool without NetOut or NetIn has no rules of its own: its
//! create and destroy need no transaction (each one reads and validates the whole ruleset,
//! and they run one at a time).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::egress::{EgressRule, IcmpMatch, PortMap, Protocol};
use super::pool::Cidr;
use super::{cmd, NetError};

/// What the rules of one container refer to.
#[derive(Debug, Clone)]
pub struct ContainerRules {
    /// Chain name in both tables.
    pub chain: String,
    /// The subnet lies in the pool, whose MASQUERADE rule covers the container.
    pub in_pool: bool,
    /// The host interface holding the subnet's gateway address: the subnet's bridge, or the
    /// host end of the veth for a routed /30.
    pub gateway_if: String,
    /// A /30 of its own, routed through the host end of its veth (no bridge).
    pub routed: bool,
    pub container_ip: Ipv4Addr,
    pub subnet: Cidr,
}

impl ContainerRules {
    /// The container's filter chain is made by its first NetOut rule rather than at create:
    /// until then the shared forward chain's catch-all sends its traffic to the default
    /// chain, which is all its own chain would do. True for a routed /30 from the pool: its
    /// subnet's only other address is the gateway (the host, reached through INPUT) and the
    /// pool's MASQUERADE rule covers it. So a create and a destroy need no firewall
    /// transaction, and those were serial and cost more with every container (the whole
    /// ruleset is read and validated): at 3,000 containers they were the create's
    /// bottleneck.
    pub fn chain_optional(&self) -> bool {
        self.in_pool && self.routed
    }
}

/// A container of a previous run whose rules are taken over.
pub struct Kept<'a> {
    pub rules: &'a ContainerRules,
    /// It had NetOut rules, so its filter chain was made (see
    /// [`ContainerRules::chain_optional`]).
    pub had_netout: bool,
}

impl Kept<'_> {
    /// Whether its rules are whole, given whether its filter chain exists.
    pub fn whole(&self, chain: bool) -> bool {
        chain || (self.rules.chain_optional() && !self.had_netout)
    }
}

/// Attempts at taking over a previous run's firewall (see [`Firewall::take_over`]).
const TAKE_OVER_ATTEMPTS: usize = 5;

pub struct Firewall {
    restore: PathBuf,
    save: PathBuf,
    prefix: String,
    /// Interface wildcard matching every gateway interface of this gardend (`g<tag>+`).
    gateways: String,
    /// Changes waiting for the next restore.
    queue: Arc<Queue>,
}

/// Group commit of restore scripts. One `iptables-restore` costs about 20 ms here, nearly all
/// of it fixed (process start, reading the ruleset, one kernel transaction), and restores must
/// run one at a time (iptables-legacy would race). So whoever gets the lock applies every
/// script queued meanwhile in one run per table: 100 concurrent destroys pay for a handful of
/// restores instead of 100 in a row.
#[derive(Default)]
struct Queue {
    lock: tokio::sync::Mutex<()>,
    pending: Mutex<Vec<Queued>>,
}

/// One caller's restore script and where its result goes.
struct Queued {
    script: String,
    done: oneshot::Sender<Result<(), NetError>>,
}

/// A restore script's table blocks in order: (table, lines between `*table` and `COMMIT`).
fn table_blocks(script: &str) -> Option<Vec<(&str, String)>> {
    let mut blocks = Vec::new();
    let mut current: Option<(&str, String)> = None;
    for line in script.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match (&mut current, line.strip_prefix('*')) {
            (None, Some(table)) => current = Some((table, String::new())),
            (Some(_), None) if line == "COMMIT" => blocks.push(current.take()?),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => return None,
        }
    }
    current.is_none().then_some(blocks)
}

async fn restore(program: &Path, script: String) -> Result<(), NetError> {
    let started = std::time::Instant::now();
    let r = cmd::run(program, &["-w", "--noflush"], Some(script))
        .await
        .map(|_| ());
    crate::telemetry::metrics().firewall_transaction(r.is_ok(), started.elapsed());
    r
}

/// Apply a batch with the same outcome as one restore per script in queue order: each table
/// block is its own transaction, a script stops at its first failing block. Blocks of one
/// table from all scripts go in one transaction; if it fails, they are retried one by one so
/// that only the faulty script fails.
async fn restore_batch(program: &Path, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let q = batch.pop().expect("one script");
        let _ = q.done.send(restore(program, q.script).await);
        return;
    }
    let parsed: Vec<Option<Vec<(&str, String)>>> =
        batch.iter().map(|q| table_blocks(&q.script)).collect();
    // Merging keeps queue order only if every script visits the tables in one common order.
    let mut order: Vec<&str> = Vec::new();
    let mut mergeable = true;
    for blocks in &parsed {
        let Some(blocks) = blocks else {
            mergeable = false;
            break;
        };
        let mut last = None;
        for (table, _) in blocks {
            let at = match order.iter().position(|t| t == table) {
                Some(at) => at,
                None => {
                    order.push(table);
                    order.len() - 1
                }
            };
            if last.is_some_and(|l| at <= l) {
                mergeable = false;
            }
            last = Some(at);
        }
    }
    if !mergeable {
        for q in batch {
            let _ = q.done.send(restore(program, q.script).await);
        }
        return;
    }
    let parsed: Vec<Vec<(&str, String)>> = parsed.into_iter().flatten().collect();
    let mut errors: Vec<Option<NetError>> = batch.iter().map(|_| None).collect();
    for table in order {
        let members: Vec<(usize, &String)> = parsed
            .iter()
            .enumerate()
            .filter(|(i, _)| errors[*i].is_none())
            .filter_map(|(i, blocks)| {
                blocks
                    .iter()
                    .find(|(t, _)| *t == table)
                    .map(|(_, body)| (i, body))
            })
            .collect();
        if members.is_empty() {
            continue;
        }
        let merged: String = members.iter().map(|(_, body)| body.as_str()).collect();
        if restore(program, format!("*{table}\n{merged}COMMIT\n"))
            .await
            .is_ok()
        {
            continue;
        }
        for (i, body) in members {
            if let Err(e) = restore(program, format!("*{table}\n{body}COMMIT\n")).await {
                errors[i] = Some(e);
            }
        }
    }
    for (q, e) in batch.into_iter().zip(errors) {
        let _ = q.done.send(e.map_or(Ok(()), Err));
    }
}

impl Firewall {
    /// `iptables` is the iptables binary; `-restore` / `-save` are found next to it.
    pub fn new(iptables: &std::path::Path, prefix: String, gateway_wildcard: String) -> Firewall {
        let sibling = |suffix: &str| {
            let mut name = iptables
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "iptables".into());
            name.push(suffix);
            iptables.with_file_name(name)
        };
        Firewall {
            restore: sibling("-restore"),
            save: sibling("-save"),
            prefix,
            gateways: gateway_wildcard,
            queue: Arc::default(),
        }
    }

    /// `gd-<tag>-`: every chain of this gardend starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn global(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Apply one restore script (each table block one transaction), batched with whatever
    /// other changes are queued (see [`Queue`]).
    async fn apply(&self, rules: String) -> Result<(), NetError> {
        let (done, result) = oneshot::channel();
        self.queue
            .pending
            .lock()
            .expect("firewall queue lock")
            .push(Queued {
                script: rules,
                done,
            });
        let queue = self.queue.clone();
        let program = self.restore.clone();
        // A task of its own, so a caller that goes away mid-restore abandons nobody's change.
        let _ = tokio::spawn(async move {
            let _g = queue.lock.lock().await;
            let batch = std::mem::take(&mut *queue.pending.lock().expect("firewall queue lock"));
            if !batch.is_empty() {
                restore_batch(&program, batch).await;
            }
        })
        .await;
        result.await.unwrap_or_else(|_| {
            Err(NetError::Command {
                command: self.restore.display().to_string(),
                message: "the restore batch was abandoned".into(),
            })
        })
    }

    /// Remove every chain with our prefix and the jumps to them from the built-in chains:
    /// what a crashed gardend left behind.
    pub async fn cleanup(&self) -> Result<(), NetError> {
        let saved = {
            let _g = self.queue.lock.lock().await;
            cmd::run(&self.save, &[], None).await?
        };
        let script = cleanup_script(&saved, &self.prefix);
        if script.is_empty() {
            return Ok(());
        }
        tracing::info!(prefix = %self.prefix, "removing firewall chains left by a previous run");
        self.apply(script).await
    }

    /// Take over from a previous run in one transaction per table: remove its chains except
    /// those of the `kept` containers (taken over by a restart), (re)install the shared chains
    /// (`global`, from [`Firewall::global_script`]) and the kept containers' jumps into theirs,
    /// so their traffic is never cut. Returns the `iptables-save` output it started from.
    pub async fn take_over(&self, kept: &[Kept<'_>], global: String) -> Result<String, NetError> {
        // A killed predecessor's last `iptables-restore` (a destroy being reclaimed) may still
        // commit between our snapshot and our transaction, which then names a chain or rule
        // that is gone: start again from a fresh snapshot.
        let mut pause = std::time::Duration::from_millis(50);
        for _ in 0..TAKE_OVER_ATTEMPTS - 1 {
            match self.take_over_once(kept, global.clone()).await {
                Err(e) => {
                    tracing::warn!(error = %e, "taking over the firewall failed; retrying from a fresh snapshot");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                ok => return ok,
            }
        }
        self.take_over_once(kept, global).await
    }

    async fn take_over_once(&self, kept: &[Kept<'_>], global: String) -> Result<String, NetError> {
        let saved = {
            let _g = self.queue.lock.lock().await;
            cmd::run(&self.save, &[], None).await?
        };
        // A container whose chain is gone cannot be kept (the caller drops it too).
        let kept: Vec<(&ContainerRules, bool)> = kept
            .iter()
            .map(|k| (k, has_chain(&saved, "filter", &k.rules.chain)))
            .filter(|(k, chain)| k.whole(*chain))
            .map(|(k, chain)| (k.rules, chain))
            .collect();
        let keep: HashSet<String> = kept
            .iter()
            .filter(|(_, chain)| *chain)
            .map(|(c, _)| c.chain.clone())
            .collect();
        let cleanup = if kept.is_empty() {
            cleanup_script(&saved, &self.prefix)
        } else {
            let globals: Vec<String> = GLOBAL_CHAINS.iter().map(|g| self.global(g)).collect();
            cleanup_script_keeping(&saved, &self.prefix, &keep, &globals)
        };
        if !cleanup.is_empty() {
            tracing::info!(prefix = %self.prefix, kept = keep.len(), "removing firewall chains left by a previous run");
        }
        let links: Vec<(&ContainerRules, bool)> = kept
            .iter()
            .filter(|(_, chain)| *chain)
            .map(|(c, _)| (*c, has_nat_chain(&saved, &c.chain)))
            .collect();
        let relink = self.relink_script(&links);
        if kept.is_empty() {
            // Nothing's traffic to keep flowing: remove, then build anew, as two transactions
            // (no chain is deleted and made again in one).
            if !cleanup.is_empty() {
                self.apply(cleanup).await?;
            }
            self.apply(merge_tables(&[global, relink])).await?;
        } else {
            self.apply(merge_tables(&[cleanup, global, relink])).await?;
        }
        Ok(saved)
    }

    /// Kept containers' jumps from the shared chains into their own; `nat_chain`: the
    /// container has a nat chain (a NetIn made it).
    fn relink_script(&self, kept: &[(&ContainerRules, bool)]) -> String {
        if kept.is_empty() {
            return String::new();
        }
        let (mut filter, mut nat) = (String::new(), String::new());
        for (c, nat_chain) in kept {
            filter += &format!("-I {} 1 {}\n", self.global("fwd"), self.forward_link(c));
            if !c.in_pool {
                nat += &format!("-A {}\n", self.masquerade(c));
            }
            if *nat_chain {
                for link in self.nat_links(c) {
                    nat += &format!("-A {link}\n");
                }
            }
        }
        let mut s = format!("*filter\n{filter}COMMIT\n");
        if !nat.is_empty() {
            s += &format!("*nat\n{nat}COMMIT\n");
        }
        s
    }

    /// [`Firewall::cleanup`] for contexts that cannot await (Drop at exit).
    pub fn cleanup_blocking(&self) {
        let Ok(saved) = std::process::Command::new(&self.save).output() else {
            return;
        };
        let script = cleanup_script(&String::from_utf8_lossy(&saved.stdout), &self.prefix);
        if script.is_empty() {
            return;
        }
        let child = std::process::Command::new(&self.restore)
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut child) = child {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = std::io::Write::write_all(&mut stdin, script.as_bytes());
            }
            let _ = child.wait();
        }
    }

    /// The chains shared by all containers, as a restore script.
    pub fn global_script(
        &self,
        pool: Cidr,
        deny: &[Cidr],
        dns: &[Ipv4Addr],
        allow_host_access: bool,
    ) -> String {
        let (fwd, def, input) = (
            self.global("fwd"),
            self.global("default"),
            self.global("input"),
        );
        let (pre, out, post) = (self.global("pre"), self.global("out"), self.global("post"));
        let br = &self.gateways;
        let mut s = String::from("*filter\n");
        for c in [&fwd, &def, &input] {
            s += &format!(":{c} - [0:0]\n");
        }
        s += &format!("-I FORWARD 1 -j {fwd}\n-I INPUT 1 -j {input}\n");
        // Containers without a filter chain of their own (see
        // `ContainerRules::chain_optional`); each chain's jump goes above this.
        s += &format!("-A {fwd} -i {br} -g {def}\n");
        s += &format!("-A {fwd} -o {br} -j ACCEPT\n");
        s += &format!("-A {def} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
        for d in dns {
            for proto in ["udp", "tcp"] {
                s += &format!("-A {def} -d {d}/32 -p {proto} --dport 53 -j ACCEPT\n");
            }
        }
        for d in deny {
            s += &format!("-A {def} -d {d} -j REJECT --reject-with icmp-net-prohibited\n");
        }
        s += &format!("-A {input} -i {br} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
        if !allow_host_access {
            s += &format!("-A {input} -i {br} -j REJECT --reject-with icmp-host-prohibited\n");
        }
        s += "COMMIT\n*nat\n";
        for c in [&pre, &out, &post] {
            s += &format!(":{c} - [0:0]\n");
        }
        s += &format!(
            "-I PREROUTING 1 -j {pre}\n-I OUTPUT 1 -j {out}\n-I POSTROUTING 1 -j {post}\n"
        );
        s += &format!("-A {post} -s {pool} -d {pool} -j RETURN\n");
        s += &format!("-A {post} -s 127.0.0.0/8 -o {br} -j MASQUERADE\n");
        s += &format!("-A {post} -s {pool} -j MASQUERADE\n");
        s += "COMMIT\n";
        s
    }

    /// The jump from the shared forward chain into the container's filter chain.
    fn forward_link(&self, c: &ContainerRules) -> String {
        format!(
            "-i {} -s {}/32 -g {}",
            c.gateway_if, c.container_ip, c.chain
        )
    }

    /// MASQUERADE of a container outside the pool (chain and rule).
    fn masquerade(&self, c: &ContainerRules) -> String {
        format!(
            "{} -s {}/32 ! -d {} -j MASQUERADE",
            self.global("post"),
            c.container_ip,
            c.subnet
        )
    }

    /// The jumps into a container's nat chain.
    fn nat_links(&self, c: &ContainerRules) -> [String; 2] {
        [
            format!("{} -j {}", self.global("pre"), c.chain),
            format!("{} -j {}", self.global("out"), c.chain),
        ]
    }

    /// Chains of a new container, with its create-time NetOut rules already expanded.
    pub async fn add_container(
        &self,
        c: &ContainerRules,
        netout: &[String],
    ) -> Result<(), NetError> {
        let mut s = format!("*filter\n:{} - [0:0]\n", c.chain);
        s += &format!("-A {} -d {} -j ACCEPT\n", c.chain, c.subnet);
        s += &format!("-A {} -g {}\n", c.chain, self.global("default"));
        s += &prepend(&c.chain, netout);
        // Before the catch-all accept towards the containers.
        s += &format!("-I {} 1 {}\n", self.global("fwd"), self.forward_link(c));
        s += "COMMIT\n";
        if !c.in_pool {
            s += &format!("*nat\n-A {}\nCOMMIT\n", self.masquerade(c));
        }
        self.apply(s).await
    }

    /// Remove a container's chains and every rule pointing at them; `filter_chain`: it has
    /// its filter chain (see [`ContainerRules::chain_optional`]); `nat_chain`: a NetIn made
    /// the container's nat chain.
    pub async fn remove_container(
        &self,
        c: &ContainerRules,
        filter_chain: bool,
        nat_chain: bool,
    ) -> Result<(), NetError> {
        let mut s = String::new();
        if filter_chain {
            s += &format!(
                "*filter\n-D {} {}\n-F {2}\n-X {2}\nCOMMIT\n",
                self.global("fwd"),
                self.forward_link(c),
                c.chain
            );
        }
        let mut nat = String::new();
        if !c.in_pool {
            nat += &format!("-D {}\n", self.masquerade(c));
        }
        if nat_chain {
            for link in self.nat_links(c) {
                nat += &format!("-D {link}\n");
            }
            nat += &format!("-F {0}\n-X {0}\n", c.chain);
        }
        if !nat.is_empty() {
            s += &format!("*nat\n{nat}COMMIT\n");
        }
        if s.is_empty() {
            return Ok(());
        }
        self.apply(s).await
    }

    /// Prepend already expanded NetOut rules (see [`expand`]).
    pub async fn add_netout(&self, chain: &str, expanded: &[String]) -> Result<(), NetError> {
        if expanded.is_empty() {
            return Ok(());
        }
        self.apply(format!("*filter\n{}COMMIT\n", prepend(chain, expanded)))
            .await
    }

    /// DNAT `host_port` on the external IP (and on 127.0.0.1 only when `loopback`: otherwise a
    /// container could shadow a host service bound to loopback) to the container; the `first`
    /// NetIn of a container makes its nat chain.
    pub async fn add_netin(
        &self,
        c: &ContainerRules,
        external_ip: Ipv4Addr,
        loopback: bool,
        host_port: u32,
        container_port: u32,
        first: bool,
    ) -> Result<(), NetError> {
        let to = format!(
            "-p tcp --dport {host_port} -j DNAT --to-destination {}:{container_port}",
            c.container_ip
        );
        let mut s = String::from("*nat\n");
        if first {
            s += &format!(":{} - [0:0]\n", c.chain);
            for link in self.nat_links(c) {
                s += &format!("-A {link}\n");
            }
        }
        s += &format!("-A {} -d {external_ip}/32 {to}\n", c.chain);
        if loopback && !external_ip.is_loopback() {
            s += &format!("-A {} -d 127.0.0.1/32 {to}\n", c.chain);
        }
        s += "COMMIT\n";
        self.apply(s).await
    }
}

/// `-I chain 1` for each expanded rule group so that the final order is: the last NetOut rule
/// first, and within one rule its lines in order (LOG before ACCEPT).
fn prepend(chain: &str, expanded: &[String]) -> String {
    let mut s = String::new();
    for group in expanded {
        for line in group.lines().rev() {
            s += &format!("-I {chain} 1 {line}\n");
        }
    }
    s
}

/// Turn NetOut rules into their iptables rule specs (one group per NetOut rule, one line per
/// port range × network range, LOG lines before ACCEPT lines).
pub fn expand(handle: &str, rules: &[EgressRule]) -> Vec<String> {
    rules.iter().map(|r| expand_one(handle, r)).collect()
}

fn expand_one(handle: &str, r: &EgressRule) -> String {
    let (proto, icmp) = match r.protocol {
        Protocol::All => ("all", String::new()),
        Protocol::Tcp => ("tcp", String::new()),
        Protocol::Udp => ("udp", String::new()),
        Protocol::Icmp(None) => ("icmp", String::new()),
        Protocol::Icmp(Some(IcmpMatch { kind, code: None })) => {
            ("icmp", format!(" --icmp-type {kind}"))
        }
        Protocol::Icmp(Some(IcmpMatch {
            kind,
            code: Some(code),
        })) => ("icmp", format!(" --icmp-type {kind}/{code}")),
    };
    let mut networks: Vec<String> = r
        .networks
        .iter()
        .map(|&(start, end)| {
            if start == end {
                format!(" -d {start}/32")
            } else {
                format!(" -m iprange --dst-range {start}-{end}")
            }
        })
        .collect();
    if networks.is_empty() {
        networks.push(String::new());
    }
    let mut ports: Vec<String> = r
        .ports
        .iter()
        .map(|&(start, end)| {
            if start == end {
                format!(" --dport {end}")
            } else {
                format!(" --dport {start}:{end}")
            }
        })
        .collect();
    if ports.is_empty() {
        ports.push(String::new());
    }
    // Log prefixes are at most 29 characters.
    let log_prefix: String = handle
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"')
        .take(27)
        .collect();
    let logged = r.log && matches!(r.protocol, Protocol::Tcp | Protocol::All);
    let mut out = String::new();
    for net in &networks {
        for port in &ports {
            let spec = format!("-p {proto}{net}{port}{icmp}");
            if logged {
                out += &format!("{spec} -m conntrack --ctstate NEW,UNTRACKED,INVALID -j LOG --log-prefix \"{log_prefix} \"\n");
            }
            out += &format!("{spec} -j ACCEPT\n");
        }
    }
    out
}

/// One block per table holding the blocks of every script in order (one transaction per
/// table); scripts that do not parse are concatenated as they are.
fn merge_tables(scripts: &[String]) -> String {
    let parsed: Option<Vec<Vec<(&str, String)>>> =
        scripts.iter().map(|s| table_blocks(s)).collect();
    let Some(parsed) = parsed else {
        return scripts.concat();
    };
    let mut tables: Vec<(&str, String)> = Vec::new();
    for (table, body) in parsed.into_iter().flatten() {
        match tables.iter_mut().find(|(t, _)| *t == table) {
            Some((_, merged)) => merged.push_str(&body),
            None => tables.push((table, body)),
        }
    }
    tables
        .into_iter()
        .map(|(t, body)| format!("*{t}\n{body}COMMIT\n"))
        .collect()
}

/// The shared chains [`Firewall::global_script`] makes (after the prefix).
const GLOBAL_CHAINS: [&str; 6] = ["fwd", "default", "input", "pre", "out", "post"];

/// The NetIn mappings a container's nat chain holds in `saved` (`iptables-save` output): the
/// firewall, not a file, is what forwards, so it is what a restart believes.
pub fn netin_mappings(saved: &str, chain: &str) -> Vec<PortMap> {
    let mut found: Vec<PortMap> = Vec::new();
    let mut table = "";
    let head = format!("-A {chain} ");
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
            continue;
        }
        if table != "nat" || !line.starts_with(&head) {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let host = after("--dport").and_then(|p| p.parse::<u32>().ok());
        let container = after("--to-destination")
            .and_then(|d| d.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u32>().ok());
        if let (Some(host_port), Some(container_port)) = (host, container) {
            if !found.iter().any(|m| m.host_port == host_port) {
                found.push(PortMap {
                    host_port,
                    container_port,
                });
            }
        }
    }
    found
}

/// Whether `saved` declares `chain` in the nat table (a NetIn made it).
pub fn has_nat_chain(saved: &str, chain: &str) -> bool {
    has_chain(saved, "nat", chain)
}

/// Whether `saved` (`iptables-save` output) declares `chain` in `table`.
pub fn has_chain(saved: &str, table: &str, chain: &str) -> bool {
    let mut current = "";
    let decl = format!(":{chain} ");
    saved.lines().any(|line| {
        if let Some(t) = line.strip_prefix('*') {
            current = t.trim();
        }
        current == table && line.starts_with(&decl)
    })
}

/// Like [`cleanup_script`], but chains in `keep` stay whole and the shared chains in `globals`
/// are only emptied (kept chains jump into the shared default chain).
fn cleanup_script_keeping(
    saved: &str,
    prefix: &str,
    keep: &HashSet<String>,
    globals: &[String],
) -> String {
    let mut out = String::new();
    let mut table = String::new();
    let (mut flush, mut delete, mut rules) = (Vec::new(), Vec::new(), Vec::new());
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if line.starts_with("COMMIT") {
            if !(flush.is_empty() && rules.is_empty()) {
                out += &format!("*{table}\n");
                for r in rules.drain(..) {
                    out += &format!("-D {r}\n");
                }
                for c in flush.drain(..) {
                    out += &format!("-F {c}\n");
                }
                for c in delete.drain(..) {
                    out += &format!("-X {c}\n");
                }
                out += "COMMIT\n";
            }
            delete.clear();
        } else if let Some(c) = line.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap_or("").to_string();
            if name.starts_with(prefix) && !keep.contains(&name) {
                flush.push(name.clone());
                if !globals.contains(&name) {
                    delete.push(name);
                }
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let target = rule
                .split_whitespace()
                .skip_while(|w| *w != "-j" && *w != "-g")
                .nth(1)
                .unwrap_or("");
            if !chain.starts_with(prefix) && target.starts_with(prefix) {
                rules.push(rule.to_string());
            }
        }
    }
    out
}

/// Restore script removing every chain starting with `prefix` and the rules of built-in chains
/// that jump to them.
fn cleanup_script(saved: &str, prefix: &str) -> String {
    let mut out = String::new();
    let mut table = String::new();
    let mut chains: Vec<String> = Vec::new();
    let mut deletes: Vec<String> = Vec::new();
    let flush =
        |out: &mut String, table: &str, chains: &mut Vec<String>, deletes: &mut Vec<String>| {
            if chains.is_empty() && deletes.is_empty() {
                return;
            }
            *out += &format!("*{table}\n");
            for d in deletes.drain(..) {
                *out += &format!("-D {d}\n");
            }
            for c in chains.iter() {
                *out += &format!("-F {c}\n");
            }
            for c in chains.drain(..) {
                *out += &format!("-X {c}\n");
            }
            *out += "COMMIT\n";
        };
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if line.starts_with("COMMIT") {
            flush(&mut out, &table, &mut chains, &mut deletes);
        } else if let Some(c) = line.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap_or("");
            if name.starts_with(prefix) {
                chains.push(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let target = rule
                .split_whitespace()
                .skip_while(|w| *w != "-j" && *w != "-g")
                .nth(1)
                .unwrap_or("");
            if !chain.starts_with(prefix) && target.starts_with(prefix) {
                deletes.push(rule.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_split_into_table_blocks() {
        let blocks = table_blocks("*filter\n:a - [0:0]\n-A a -j ACCEPT\nCOMMIT\n*nat\nCOMMIT\n");
        assert_eq!(
            blocks,
            Some(vec![
                ("filter", ":a - [0:0]\n-A a -j ACCEPT\n".to_string()),
                ("nat", String::new())
            ])
        );
        assert_eq!(
            table_blocks("-A a -j ACCEPT\n"),
            None,
            "rule outside a table"
        );
        assert_eq!(table_blocks("*filter\n-A a\n"), None, "no COMMIT");
    }

    /// A stand-in for iptables-restore that logs each run's input and fails on "bad".
    fn fake_restore(dir: &Path) -> PathBuf {
        let program = dir.join("restore");
        let log = dir.join("log");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\nin=$(cat)\nprintf '%s\\n--\\n' \"$in\" >> {}\ncase \"$in\" in *bad*) exit 1;; esac\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        program
    }

    #[tokio::test]
    async fn a_batch_merges_tables_and_isolates_a_failing_script() {
        let dir = tempfile::tempdir().unwrap();
        let program = fake_restore(dir.path());
        let mut results = Vec::new();
        let batch = [
            "*filter\n-A one\nCOMMIT\n*nat\n-A one-nat\nCOMMIT\n",
            "*filter\n-A bad\nCOMMIT\n*nat\n-A two-nat\nCOMMIT\n",
            "*filter\n-A three\nCOMMIT\n",
        ]
        .into_iter()
        .map(|script| {
            let (done, result) = oneshot::channel();
            results.push(result);
            Queued {
                script: script.to_string(),
                done,
            }
        })
        .collect();
        restore_batch(&program, batch).await;
        let mut outcomes = Vec::new();
        for r in results {
            outcomes.push(r.await.unwrap().is_ok());
        }
        assert_eq!(outcomes, [true, false, true]);
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        let runs: Vec<&str> = log.split("\n--\n").filter(|r| !r.is_empty()).collect();
        assert_eq!(
            runs,
            [
                // All filter blocks at once; it fails, so one by one.
                "*filter\n-A one\n-A bad\n-A three\nCOMMIT",
                "*filter\n-A one\nCOMMIT",
                "*filter\n-A bad\nCOMMIT",
                "*filter\n-A three\nCOMMIT",
                // The failed script stops at its filter block.
                "*nat\n-A one-nat\nCOMMIT",
            ]
        );
    }

    #[test]
    fn expands_ports_times_networks() {
        let r = EgressRule {
            protocol: Protocol::Tcp,
            networks: vec![
                ("10.0.0.1".parse().unwrap(), "10.0.0.9".parse().unwrap()),
                ("8.8.8.8".parse().unwrap(), "8.8.8.8".parse().unwrap()),
            ],
            ports: vec![(80, 443), (22, 22)],
            log: false,
        };
        let lines: Vec<String> = expand("h", &[r])[0].lines().map(String::from).collect();
        assert_eq!(
            lines,
            [
                "-p tcp -m iprange --dst-range 10.0.0.1-10.0.0.9 --dport 80:443 -j ACCEPT",
                "-p tcp -m iprange --dst-range 10.0.0.1-10.0.0.9 --dport 22 -j ACCEPT",
                "-p tcp -d 8.8.8.8/32 --dport 80:443 -j ACCEPT",
                "-p tcp -d 8.8.8.8/32 --dport 22 -j ACCEPT",
            ]
        );
    }

    #[test]
    fn icmp_and_log() {
        let icmp = |code| EgressRule {
            protocol: Protocol::Icmp(Some(IcmpMatch { kind: 8, code })),
            ..EgressRule::allow_all()
        };
        assert_eq!(
            expand("h", &[icmp(Some(0))])[0],
            "-p icmp --icmp-type 8/0 -j ACCEPT\n"
        );
        assert_eq!(
            expand("h", &[icmp(None)])[0],
            "-p icmp --icmp-type 8 -j ACCEPT\n"
        );
        let logged = EgressRule {
            log: true,
            ..EgressRule::allow_all()
        };
        let g = &expand("my-handle", &[logged])[0];
        assert!(g.starts_with("-p all -m conntrack --ctstate NEW,UNTRACKED,INVALID -j LOG --log-prefix \"my-handle \"\n"));
        assert!(g.ends_with("-p all -j ACCEPT\n"));
        let udp_logged = EgressRule {
            protocol: Protocol::Udp,
            log: true,
            ..EgressRule::allow_all()
        };
        assert_eq!(
            expand("h", &[udp_logged])[0],
            "-p udp -j ACCEPT\n",
            "only TCP and all are logged"
        );
    }

    #[test]
    fn prepend_keeps_group_order_and_reverses_rules() {
        let s = prepend("c", &["a1\na2\n".into(), "b1\n".into()]);
        assert_eq!(s, "-I c 1 a2\n-I c 1 a1\n-I c 1 b1\n");
    }

    #[test]
    fn take_over_scripts_merge_into_one_transaction_per_table() {
        let merged = merge_tables(&[
            "*filter\n-F a\nCOMMIT\n*nat\n-F b\nCOMMIT\n".to_string(),
            String::new(),
            "*filter\n:a - [0:0]\nCOMMIT\n".to_string(),
            "*nat\n-A b -j c\nCOMMIT\n".to_string(),
        ]);
        assert_eq!(
            merged,
            "*filter\n-F a\n:a - [0:0]\nCOMMIT\n*nat\n-F b\n-A b -j c\nCOMMIT\n"
        );
    }

    #[test]
    fn cleanup_keeping_spares_kept_chains_and_reads_their_netin() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:gd-x-pre - [0:0]\n:gd-x-0a000002 - [0:0]\n:gd-x-0a000006 - [0:0]\n\
-A PREROUTING -j gd-x-pre\n-A gd-x-pre -j gd-x-0a000002\n\
-A gd-x-0a000002 -d 10.1.1.1/32 -p tcp -m tcp --dport 61001 -j DNAT --to-destination 10.0.0.2:8080\n\
-A gd-x-0a000002 -d 127.0.0.1/32 -p tcp -m tcp --dport 61001 -j DNAT --to-destination 10.0.0.2:8080\nCOMMIT\n";
        let keep: HashSet<String> = ["gd-x-0a000002".to_string()].into();
        let script = cleanup_script_keeping(saved, "gd-x-", &keep, &["gd-x-pre".to_string()]);
        assert!(script.contains("-D PREROUTING -j gd-x-pre\n"), "{script}");
        assert!(script.contains("-F gd-x-pre\n"), "{script}");
        assert!(!script.contains("-X gd-x-pre"), "{script}");
        assert!(script.contains("-X gd-x-0a000006\n"), "{script}");
        assert!(!script.contains("gd-x-0a000002"), "{script}");
        let m = netin_mappings(saved, "gd-x-0a000002");
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].host_port, m[0].container_port), (61001, 8080));
        assert!(has_nat_chain(saved, "gd-x-0a000002"));
        assert!(!has_nat_chain(saved, "gd-x-0a000003"));
    }

    #[test]
    fn cleanup_removes_prefixed_chains_and_jumps_only() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:gd-abcde-fwd - [0:0]\n:gd-other-fwd - [0:0]\n\
                     -A FORWARD -j gd-abcde-fwd\n-A FORWARD -j gd-other-fwd\n-A gd-abcde-fwd -o x -j ACCEPT\nCOMMIT\n\
                     *nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            cleanup_script(saved, "gd-abcde-"),
            "*filter\n-D FORWARD -j gd-abcde-fwd\n-F gd-abcde-fwd\n-X gd-abcde-fwd\nCOMMIT\n"
        );
    }
}
