//! `cellctl`: a small controller for people, talking NATS only.
//!
//! It does what a Cloud Controller does with a pool of agents: placement from advertisements
//! (spec §7), start messages, `dea.find.droplet` queries, `dea.stop`, signed file URLs,
//! one-off tasks, and staging (`push`, `stage`: package, buildpacks, uploads and the staging
//! log served and followed by cellctl itself).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::bus::Bus;
use agent::ctl::{self, placement};
use agent::protocol::{
    subject, Advertise, FindDroplet, FindDropletReply, InstanceFilter, InstanceState, Limits,
    StartMessage, TaskLimits, TaskReply, TaskRun, TaskState, TaskStatus,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;

#[derive(Parser)]
#[command(about = "A small controller for cell agents, over NATS")]
struct Cli {
    /// NATS server(s), `nats://[user:pass@]host:port` (repeatable).
    #[arg(
        long,
        env = "CELL_NATS",
        default_value = "nats://127.0.0.1:4222",
        value_delimiter = ','
    )]
    nats: Vec<String>,
    /// How long to collect advertisements and replies, in seconds.
    #[arg(long, default_value_t = 1.5)]
    wait: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Agents and their capacity, from their advertisements.
    Advertisements,
    /// Start N instances of an app, placed across the agents; wait until they run.
    Start(StartArgs),
    /// Every instance of every app the agents advertise.
    Apps,
    /// Stop an app's instances (all, or one index).
    Stop {
        app: String,
        #[arg(long)]
        index: Option<u64>,
    },
    /// Print a file (or directory listing) of an instance, through its signed URL.
    Files {
        app: String,
        path: String,
        #[arg(long, default_value_t = 0)]
        index: u64,
        /// The directory server's HOST:PORT (learned from router.register when absent).
        #[arg(long)]
        dir_server: Option<SocketAddr>,
    },
    /// One-off tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Stage an app directory with buildpacks on an agent, then start its instances.
    Push(Box<PushArgs>),
    /// Stage an app directory with buildpacks on an agent and save the droplet.
    Stage(Box<StageCmdArgs>),
}

#[derive(Args)]
struct StageArgs {
    /// The app's directory (zipped by cellctl as the app package).
    dir: PathBuf,
    /// A buildpack: a directory (zipped by cellctl), a zip file, or a zip URL. Repeat it for
    /// several: the first whose bin/detect accepts the app is used.
    #[arg(long, required = true)]
    buildpack: Vec<String>,
    /// App name (and id); defaults to the directory's name.
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "256M")]
    memory: String,
    #[arg(long, default_value = "1G")]
    disk: String,
    /// Stack; defaults to the one stack every agent has.
    #[arg(long)]
    stack: Option<String>,
    /// Start command, instead of the Procfile's or the buildpack's.
    #[arg(long)]
    command: Option<String>,
    /// Environment entry NAME=value (repeatable), for staging and the instances.
    #[arg(long)]
    env: Vec<String>,
    /// Address agents reach cellctl's file server on (package, buildpacks, uploads).
    #[arg(long, default_value = "127.0.0.1")]
    serve_ip: IpAddr,
    /// The directory server's HOST:PORT, for the staging log (learned from router.register
    /// when absent).
    #[arg(long)]
    dir_server: Option<SocketAddr>,
    /// Seconds the staging may take.
    #[arg(long, default_value_t = 900.0)]
    staging_timeout: f64,
}

#[derive(Args)]
struct PushArgs {
    #[command(flatten)]
    stage: StageArgs,
    #[arg(long, default_value_t = 1)]
    instances: u64,
    /// Route (host name) of the app.
    #[arg(long)]
    route: Vec<String>,
    /// Seconds to wait for every instance to be RUNNING.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

#[derive(Args)]
struct StageCmdArgs {
    #[command(flatten)]
    stage: StageArgs,
    /// Where to save the droplet.
    #[arg(short, long, default_value = "droplet.tgz")]
    output: PathBuf,
}

#[derive(Args)]
struct StartArgs {
    app: String,
    /// A droplet tgz: a local file (served by cellctl itself) or an http(s) URL.
    #[arg(long)]
    droplet: String,
    #[arg(long, default_value_t = 1)]
    instances: u64,
    #[arg(long, default_value = "256M")]
    memory: String,
    #[arg(long, default_value = "1G")]
    disk: String,
    /// Route (host name) of the app.
    #[arg(long)]
    route: Vec<String>,
    /// Stack; defaults to the one stack every agent has.
    #[arg(long)]
    stack: Option<String>,
    /// Start command (otherwise the droplet's staging_info.yml says).
    #[arg(long)]
    command: Option<String>,
    /// Environment entry NAME=value (repeatable).
    #[arg(long)]
    env: Vec<String>,
    /// Address agents reach cellctl's droplet server on.
    #[arg(long, default_value = "127.0.0.1")]
    serve_ip: IpAddr,
    /// Seconds to wait for every instance to be RUNNING.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Run a command as a task on one agent; print its output; exit with its exit status.
    Run(Box<TaskRunArgs>),
    /// A task's state and output.
    Status {
        id: String,
        /// Print the raw JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Terminate a task.
    Terminate { id: String },
}

#[derive(Args)]
struct TaskRunArgs {
    #[arg(long)]
    stack: Option<String>,
    #[arg(long, default_value = "256M")]
    memory: String,
    #[arg(long, default_value = "1G")]
    disk: String,
    /// Seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Given to the command as $1 and TASK_INPUT.
    #[arg(long)]
    input: Option<String>,
    #[arg(long)]
    install_script: Option<String>,
    /// A droplet URL unpacked into /home/vcap first.
    #[arg(long)]
    droplet: Option<String>,
    /// Environment entry NAME=value (repeatable).
    #[arg(long)]
    env: Vec<String>,
    /// Task id (random by default).
    #[arg(long)]
    id: Option<String>,
    /// The command: one word is shell text, several are quoted and joined.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cellctl: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cellctl: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> Result<i32> {
    let window = Duration::from_secs_f64(cli.wait.max(0.05));
    let bus = tokio::time::timeout(Duration::from_secs(10), Bus::connect(&cli.nats, "cellctl"))
        .await
        .with_context(|| format!("no NATS server answered at {:?}", cli.nats))??;
    match cli.command {
        Command::Advertisements => advertisements(&bus, window).await,
        Command::Start(a) => start(&bus, window, a).await,
        Command::Apps => apps(&bus, window).await,
        Command::Stop { app, index } => stop(&bus, window, &app, index).await,
        Command::Files {
            app,
            path,
            index,
            dir_server,
        } => files(&bus, window, &app, &path, index, dir_server).await,
        Command::Task(TaskCommand::Run(a)) => task_run(&bus, window, *a).await,
        Command::Task(TaskCommand::Status { id, json }) => task_status(&bus, &id, json).await,
        Command::Task(TaskCommand::Terminate { id }) => task_terminate(&bus, &id).await,
        Command::Push(a) => push(&bus, window, *a).await,
        Command::Stage(a) => stage_only(&bus, window, *a).await,
    }
}

async fn advertisements(bus: &Bus, window: Duration) -> Result<i32> {
    let ads = ctl::advertisements(bus, window).await?;
    if ads.is_empty() {
        bail!("no agent advertised within {window:?}");
    }
    let mut rows = vec![[
        "AGENT".to_string(),
        "STACKS".into(),
        "ZONE".into(),
        "MEMORY_MB".into(),
        "DISK_MB".into(),
        "INSTANCES".into(),
    ]];
    for ad in &ads {
        rows.push([
            ad.id.clone(),
            ad.stacks.join(","),
            ad.placement_properties.zone.clone(),
            ad.available_memory.to_string(),
            ad.available_disk.to_string(),
            ad.app_id_to_count.values().sum::<u64>().to_string(),
        ]);
    }
    print_table(&rows);
    Ok(0)
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// The `--stack`, or the one stack every agent has.
fn choose_stack(given: Option<String>, ads: &[Advertise]) -> Result<String> {
    if let Some(s) = given {
        return Ok(s);
    }
    let all: BTreeSet<&String> = ads.iter().flat_map(|a| &a.stacks).collect();
    match all.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no agent advertised a stack"),
        many => bail!("agents have several stacks ({many:?}): choose one with --stack"),
    }
}

async fn start(bus: &Bus, window: Duration, a: StartArgs) -> Result<i32> {
    let memory = ctl::parse_size_mb(&a.memory).context("--memory")?;
    let disk = ctl::parse_size_mb(&a.disk).context("--disk")?;
    if a.instances == 0 {
        bail!("--instances must be at least 1");
    }
    for e in &a.env {
        if !e.contains('=') {
            bail!("--env {e:?} is not NAME=value");
        }
    }
    let ads = ctl::advertisements(bus, window).await?;
    if ads.is_empty() {
        bail!("no agent advertised within {window:?}");
    }
    let stack = choose_stack(a.stack, &ads)?;

    // The droplet: served by us from a file, or a URL the agents fetch themselves.
    let is_url = a.droplet.starts_with("http://") || a.droplet.starts_with("https://");
    let (bytes, _server, uri) = if is_url {
        let bytes = reqwest::get(&a.droplet)
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("downloading {}", a.droplet))?
            .bytes()
            .await
            .with_context(|| format!("downloading {}", a.droplet))?
            .to_vec();
        (bytes, None, a.droplet.clone())
    } else {
        let bytes = std::fs::read(&a.droplet).with_context(|| format!("reading {}", a.droplet))?;
        let name = format!("{}.tgz", uuid::Uuid::new_v4().simple());
        let server = ctl::DropletServer::start(a.serve_ip, &name, bytes.clone()).await?;
        let url = server.url.clone();
        eprintln!("serving {} at {url}", a.droplet);
        (bytes, Some(server), url)
    };
    let sha1 = {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(&bytes))
    };
    drop(bytes);

    start_instances(
        bus,
        window,
        ads,
        &Launch {
            app: a.app,
            stack,
            sha1,
            uri,
            instances: a.instances,
            memory,
            disk,
            routes: a.route,
            command: a.command,
            env: a.env,
            timeout: a.timeout,
        },
    )
    .await
}

/// What `start` and `push` start: N instances of one droplet.
struct Launch {
    app: String,
    stack: String,
    sha1: String,
    uri: String,
    instances: u64,
    memory: u64,
    disk: u64,
    routes: Vec<String>,
    command: Option<String>,
    env: Vec<String>,
    timeout: f64,
}

/// Place and start `l.instances` instances (§7) and wait until every one is RUNNING; print
/// where each answers. The droplet URL must stay served until this returns.
async fn start_instances(
    bus: &Bus,
    window: Duration,
    ads: Vec<Advertise>,
    l: &Launch,
) -> Result<i32> {
    let version = uuid::Uuid::new_v4().simple().to_string();
    let mut pool = placement::Pool::new(ads);
    let (stack, memory, disk) = (l.stack.clone(), l.memory, l.disk);
    let need = placement::Need {
        stack: stack.clone(),
        memory_mb: memory,
        disk_mb: disk,
        app_id: l.app.clone(),
    };
    let mut rng = rand::thread_rng();
    for index in 0..l.instances {
        let Some(agent_id) = pool.place(&need, &mut rng) else {
            bail!(
                "no agent can take instance {index} ({memory} MB memory, {disk} MB disk, stack {stack})"
            );
        };
        let msg = StartMessage {
            droplet: l.app.clone(),
            name: l.app.clone(),
            stack: stack.clone(),
            uris: l.routes.clone(),
            prod: false,
            sha1: Some(l.sha1.clone()),
            executable_file: None,
            executable_uri: Some(l.uri.clone()),
            version: version.clone(),
            services: Vec::new(),
            limits: Limits {
                mem: memory,
                disk,
                fds: 16384,
            },
            env: l.env.clone(),
            cc_partition: "default".into(),
            console: false,
            debug: None,
            start_command: l.command.clone(),
            health_check_timeout: None,
            vcap_application: serde_json::json!({
                "application_name": l.app,
                "application_id": l.app,
                "application_version": version,
                "application_uris": l.routes,
                "limits": {"mem": memory, "disk": disk, "fds": 16384},
            }),
            index,
            egress_network_rules: Vec::new(),
        };
        bus.publish(subject::start(&agent_id), &msg).await;
        eprintln!("{}[{index}] placed on agent {agent_id}", l.app);
    }
    bus.flush().await;

    // Serve the droplet until every instance runs (or one cannot).
    let deadline = Instant::now() + Duration::from_secs_f64(l.timeout.max(1.0));
    let query = FindDroplet {
        filter: InstanceFilter {
            droplet: l.app.clone(),
            version: Some(version.clone()),
            ..Default::default()
        },
        include_stats: true,
        path: None,
    };
    loop {
        let found = ctl::find(bus, &query, window.min(Duration::from_millis(500))).await?;
        let by_index: BTreeMap<u64, &FindDropletReply> =
            found.iter().map(|r| (r.index, r)).collect();
        let running: Vec<&FindDropletReply> = by_index
            .values()
            .copied()
            .filter(|r| r.state == InstanceState::Running && r.stats.is_some())
            .collect();
        if running.len() as u64 >= l.instances {
            for r in running {
                let s = r.stats.as_ref().expect("filtered");
                println!(
                    "{}[{}] RUNNING at {}:{} (agent {}, instance {})",
                    l.app, r.index, s.host, s.port, r.dea, r.instance
                );
            }
            return Ok(0);
        }
        if let Some(c) = by_index
            .values()
            .find(|r| r.state == InstanceState::Crashed)
        {
            bail!("{}[{}] CRASHED on agent {}", l.app, c.index, c.dea);
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = by_index
                .values()
                .map(|r| format!("[{}] {}", r.index, r.state.as_str()))
                .collect();
            bail!(
                "{} of {} instances RUNNING after {:?}: {states:?}",
                running.len(),
                l.instances,
                Duration::from_secs_f64(l.timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn apps(bus: &Bus, window: Duration) -> Result<i32> {
    let ads = ctl::advertisements(bus, window).await?;
    let app_ids: BTreeSet<String> = ads
        .iter()
        .flat_map(|a| a.app_id_to_count.keys().cloned())
        .collect();
    let mut rows = vec![[
        "APP".to_string(),
        "INDEX".into(),
        "STATE".into(),
        "ADDRESS".into(),
        "AGENT".into(),
        "INSTANCE".into(),
    ]];
    for app in app_ids {
        let query = FindDroplet {
            filter: InstanceFilter {
                droplet: app.clone(),
                ..Default::default()
            },
            include_stats: true,
            path: None,
        };
        for r in ctl::find(bus, &query, window).await? {
            let address = r
                .stats
                .as_ref()
                .map(|s| format!("{}:{}", s.host, s.port))
                .unwrap_or_else(|| "-".into());
            rows.push([
                app.clone(),
                r.index.to_string(),
                r.state.as_str().to_string(),
                address,
                r.dea,
                r.instance,
            ]);
        }
    }
    print_table(&rows);
    Ok(0)
}

async fn stop(bus: &Bus, window: Duration, app: &str, index: Option<u64>) -> Result<i32> {
    let filter = InstanceFilter {
        droplet: app.to_string(),
        indices: index.map(|i| vec![i]),
        ..Default::default()
    };
    let query = FindDroplet {
        filter: filter.clone(),
        include_stats: false,
        path: None,
    };
    let live = |r: &FindDropletReply| {
        matches!(
            r.state,
            InstanceState::Born
                | InstanceState::Starting
                | InstanceState::Running
                | InstanceState::Stopping
                | InstanceState::Resuming
                | InstanceState::Evacuating
        )
    };
    let before = ctl::find(bus, &query, window).await?;
    let n = before.iter().filter(|r| live(r)).count();
    if n == 0 {
        bail!("no running instance of {app} matches");
    }
    bus.publish(subject::STOP, &filter).await;
    bus.flush().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = ctl::find(bus, &query, window.min(Duration::from_millis(500))).await?;
        if !left.iter().any(live) {
            println!("stopped {n} instance(s) of {app}");
            return Ok(0);
        }
        if Instant::now() >= deadline {
            bail!("{} instance(s) of {app} still not stopped", left.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn files(
    bus: &Bus,
    window: Duration,
    app: &str,
    path: &str,
    index: u64,
    dir_server: Option<SocketAddr>,
) -> Result<i32> {
    let query = FindDroplet {
        filter: InstanceFilter {
            droplet: app.to_string(),
            indices: Some(vec![index]),
            ..Default::default()
        },
        include_stats: false,
        path: Some(path.to_string()),
    };
    let found = ctl::find(bus, &query, window).await?;
    let Some(url) = found.iter().find_map(|r| r.file_uri_v2.clone()) else {
        bail!("no instance {app}[{index}] answered with a file URL");
    };
    let parsed = url::Url::parse(&url).with_context(|| format!("file URL {url:?}"))?;
    let host = parsed
        .host_str()
        .with_context(|| format!("file URL {url:?} has no host"))?
        .to_string();
    // `<uuid>.<domain>` is for routers; reach the directory server that registered it.
    let addr = match dir_server {
        Some(a) => a,
        None => ctl::directory_server(bus, &host, window.max(Duration::from_secs(5)))
            .await?
            .with_context(|| {
                format!("no router.register for {host}: give the directory server with --dir-server HOST:PORT")
            })?,
    };
    let client = reqwest::Client::builder()
        .resolve(&host, addr)
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    let resp = client
        .get(url.as_str())
        .send()
        .await
        .with_context(|| format!("GET {url} via {addr}"))?;
    let status = resp.status();
    let body = resp.bytes().await.context("reading the reply")?;
    use std::io::Write;
    if status.is_success() {
        std::io::stdout().write_all(&body)?;
        Ok(0)
    } else {
        bail!("{status}: {}", String::from_utf8_lossy(&body).trim_end())
    }
}

async fn task_run(bus: &Bus, window: Duration, a: TaskRunArgs) -> Result<i32> {
    let memory = ctl::parse_size_mb(&a.memory).context("--memory")?;
    let disk = ctl::parse_size_mb(&a.disk).context("--disk")?;
    let ads = ctl::advertisements(bus, window).await?;
    if ads.is_empty() {
        bail!("no agent advertised within {window:?}");
    }
    let stack = choose_stack(a.stack, &ads)?;
    let mut pool = placement::Pool::new(ads);
    let need = placement::Need {
        stack: stack.clone(),
        memory_mb: memory,
        disk_mb: disk,
        app_id: String::new(),
    };
    let agent_id = pool
        .place(&need, &mut rand::thread_rng())
        .with_context(|| {
            format!("no agent can take a task of {memory} MB, {disk} MB disk, stack {stack}")
        })?;
    let task_id =
        a.id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let sha1 = match &a.droplet {
        None => None,
        Some(url) => {
            let bytes = reqwest::get(url)
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("downloading {url}"))?
                .bytes()
                .await
                .with_context(|| format!("downloading {url}"))?;
            use sha1::Digest;
            Some(hex::encode(sha1::Sha1::digest(&bytes)))
        }
    };
    let msg = TaskRun {
        task_id: task_id.clone(),
        stack,
        command: ctl::shell_command(&a.command),
        install_script: a.install_script,
        input: a.input,
        droplet_uri: a.droplet,
        sha1,
        limits: TaskLimits { mem: memory, disk },
        timeout: a.timeout,
        env: a.env,
    };

    // Listen for the completion before the task can end.
    let mut completed = bus
        .client()
        .subscribe(subject::TASK_COMPLETED.to_string())
        .await
        .context("subscribing to task.completed")?;
    bus.flush().await;
    let reply: TaskReply = bus
        .request(&subject::task_run(&agent_id), &msg, Duration::from_secs(10))
        .await?;
    if reply.state == TaskState::Error {
        bail!(
            "task {task_id} refused by agent {agent_id}: {}",
            reply.error.unwrap_or_default()
        );
    }
    eprintln!("task {task_id} {:?} on agent {agent_id}", reply.state);

    let status = loop {
        tokio::select! {
            m = completed.next() => {
                let Some(m) = m else { bail!("NATS subscription ended") };
                if let Some(s) = Bus::decode::<TaskStatus>(&m) {
                    if s.task_id == task_id {
                        break s;
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("terminating task {task_id}");
                bus.publish(subject::TASK_TERMINATE, &serde_json::json!({"task_id": task_id})).await;
                bus.flush().await;
            }
        }
    };
    // Retrieve it once, so the agent's retention period starts.
    let _ = bus
        .request::<_, serde_json::Value>(
            subject::TASK_STATUS,
            &serde_json::json!({ "task_id": task_id }),
            Duration::from_secs(2),
        )
        .await;
    print_output(&status)?;
    Ok(exit_code(&status))
}

fn print_output(s: &TaskStatus) -> Result<()> {
    use std::io::Write;
    std::io::stdout().write_all(s.stdout.as_bytes())?;
    std::io::stdout().flush()?;
    std::io::stderr().write_all(s.stderr.as_bytes())?;
    if let Some(e) = &s.error {
        eprintln!("task {} {:?}: {e}", s.task_id, s.state);
    } else if s.state != TaskState::Finished {
        eprintln!("task {} {:?}", s.task_id, s.state);
    }
    Ok(())
}

/// The task's exit status; 1 when it has none (terminated, error).
fn exit_code(s: &TaskStatus) -> i32 {
    match (s.state, s.exit_status) {
        (TaskState::Finished, _) => 0,
        (_, Some(n)) if n > 0 && n < 256 => n as i32,
        _ => 1,
    }
}

async fn task_status(bus: &Bus, id: &str, json: bool) -> Result<i32> {
    // Every agent answers: the owner at once, the others later with an error.
    let replies: Vec<serde_json::Value> = bus
        .gather(
            subject::TASK_STATUS,
            &serde_json::json!({ "task_id": id }),
            agent::task::UNKNOWN_REPLY_DELAY + Duration::from_millis(250),
        )
        .await?;
    let Some(found) = replies
        .iter()
        .find(|r| r.get("state").is_some())
        .or(replies.first())
    else {
        bail!("no agent answered");
    };
    if let Some(e) = found.get("error").filter(|_| found.get("state").is_none()) {
        bail!("{}", e.as_str().unwrap_or("unknown task"));
    }
    if json {
        println!("{found}");
        return Ok(0);
    }
    let s: TaskStatus = serde_json::from_value(found.clone()).context("task.status reply")?;
    println!(
        "task {} {:?}{}",
        s.task_id,
        s.state,
        s.exit_status
            .map(|n| format!(", exit status {n}"))
            .unwrap_or_default()
    );
    print_output(&s)?;
    Ok(0)
}

async fn task_terminate(bus: &Bus, id: &str) -> Result<i32> {
    let replies: Vec<serde_json::Value> = bus
        .gather(
            subject::TASK_TERMINATE,
            &serde_json::json!({ "task_id": id }),
            agent::task::UNKNOWN_REPLY_DELAY + Duration::from_millis(250),
        )
        .await?;
    match replies.iter().find(|r| r.get("state").is_some()) {
        Some(r) => {
            println!("task {id}: {}", r["state"].as_str().unwrap_or("?"));
            Ok(0)
        }
        None => bail!(
            "{}",
            replies
                .first()
                .and_then(|r| r["error"].as_str())
                .unwrap_or("no agent answered")
        ),
    }
}

/// A finished staging: the droplet, and the server that still serves it.
struct Staged {
    server: ctl::stage::StageServer,
    app: String,
    stack: String,
    memory: u64,
    disk: u64,
    sha1: String,
    droplet: axum::body::Bytes,
}

/// `name-<12 hex of sha1(content)>`: a buildpack key that changes with the content (agents
/// keep admin buildpacks by key), made of the characters keys may have.
fn buildpack_key(name: &str, content: &[u8]) -> String {
    use sha1::Digest;
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    let hash = hex::encode(sha1::Sha1::digest(content));
    format!("{}-{}", clean.trim_matches('_'), &hash[..12])
}

/// The buildpacks as admin buildpacks (so detection runs in order), served by `server` unless
/// given as URLs.
fn buildpacks(
    given: &[String],
    server: &ctl::stage::StageServer,
) -> Result<Vec<agent::protocol::AdminBuildpack>> {
    let mut out = Vec::new();
    for b in given {
        if b.starts_with("http://") || b.starts_with("https://") {
            let base = b
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("buildpack")
                .trim_end_matches(".zip");
            out.push(agent::protocol::AdminBuildpack {
                key: buildpack_key(base, b.as_bytes()),
                url: b.clone(),
            });
            continue;
        }
        let path = Path::new(b);
        let meta = std::fs::metadata(path).with_context(|| format!("--buildpack {b}"))?;
        let bytes = if meta.is_dir() {
            if !path.join("bin/detect").is_file() || !path.join("bin/compile").is_file() {
                bail!("--buildpack {b}: a buildpack directory has bin/detect and bin/compile");
            }
            ctl::archive::zip_dir(path).with_context(|| format!("zipping {b}"))?
        } else {
            let bytes = std::fs::read(path).with_context(|| format!("reading {b}"))?;
            if !bytes.starts_with(b"PK") {
                bail!("--buildpack {b}: not a zip file");
            }
            bytes
        };
        let name = std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "buildpack".into());
        let name = name.trim_end_matches(".zip").to_string();
        let key = buildpack_key(&name, &bytes);
        let url = server.serve(&format!("/buildpacks/{key}.zip"), bytes);
        out.push(agent::protocol::AdminBuildpack { key, url });
    }
    Ok(out)
}

/// Package, serve, stage on an agent chosen from the advertisements, stream the log.
/// `Err(code)` when the staging failed (already reported).
async fn stage_app(
    bus: &Bus,
    window: Duration,
    a: &StageArgs,
) -> Result<std::result::Result<Staged, i32>> {
    use agent::protocol::{Limits, StagingMeta, StagingProperties, StagingRequest};
    let memory = ctl::parse_size_mb(&a.memory).context("--memory")?;
    let disk = ctl::parse_size_mb(&a.disk).context("--disk")?;
    for e in &a.env {
        if !e.contains('=') {
            bail!("--env {e:?} is not NAME=value");
        }
    }
    let dir = std::fs::canonicalize(&a.dir).with_context(|| format!("{}", a.dir.display()))?;
    let app = match &a.name {
        Some(n) => n.clone(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the app directory has no name: give --name")?,
    };
    if app.is_empty() {
        bail!("the app name is empty");
    }

    let server = ctl::stage::StageServer::start(a.serve_ip).await?;
    let package = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || ctl::archive::zip_dir(&dir))
            .await
            .context("zipping the app")??
    };
    eprintln!(
        "packaged {} ({} bytes zipped)",
        a.dir.display(),
        package.len()
    );
    let package_url = server.serve(
        &format!("/packages/{}.zip", uuid::Uuid::new_v4().simple()),
        package,
    );
    let admin = buildpacks(&a.buildpack, &server)?;

    let ads = ctl::advertisements(bus, window).await?;
    if ads.is_empty() {
        bail!("no agent advertised within {window:?}");
    }
    let stack = choose_stack(a.stack.clone(), &ads)?;
    let need = placement::Need {
        stack: stack.clone(),
        memory_mb: memory,
        disk_mb: disk,
        app_id: String::new(),
    };
    let agent_id = placement::Pool::new(ads)
        .place(&need, &mut rand::thread_rng())
        .with_context(|| {
            format!("no agent can stage {app} ({memory} MB memory, {disk} MB disk, stack {stack})")
        })?;

    let task_id = uuid::Uuid::new_v4().simple().to_string();
    let req = StagingRequest {
        app_id: app.clone(),
        task_id: task_id.clone(),
        stack: stack.clone(),
        download_uri: package_url,
        upload_uri: server.droplet_upload_url(),
        buildpack_cache_download_uri: Some(server.url(ctl::stage::CACHE_PATH)),
        buildpack_cache_upload_uri: Some(server.cache_upload_url()),
        properties: StagingProperties {
            services: Vec::new(),
            resources: Some(Limits {
                mem: memory,
                disk,
                fds: 16384,
            }),
            environment: a.env.clone(),
            meta: Some(StagingMeta {
                command: a.command.clone(),
            }),
            buildpack: None,
            buildpack_git_url: None,
            buildpack_key: None,
        },
        start_message: None,
        admin_buildpacks: admin.clone(),
        egress_network_rules: Vec::new(),
        memory_limit: Some(memory),
        disk_limit: Some(disk),
        accepts_http: false,
    };
    let keys: Vec<&str> = admin.iter().map(|b| b.key.as_str()).collect();
    eprintln!("staging {app} on agent {agent_id} (task {task_id}, buildpacks {keys:?})");
    let opts = ctl::stage::StageOptions {
        dir_server: a.dir_server,
        setup_timeout: Duration::from_secs(300),
        timeout: Duration::from_secs_f64(a.staging_timeout.max(1.0)),
    };
    let outcome =
        ctl::stage::stage(bus, &agent_id, &req, &opts, Box::new(std::io::stdout())).await?;
    if let Some(e) = &outcome.log_error {
        eprintln!("(staging log unavailable: {e})");
    }
    let r = outcome.reply;
    if let Some(error) = &r.error {
        eprintln!("staging of {app} failed: {error}");
        if let Some(info) = &r.error_info {
            eprintln!("{}: {}", info.kind, info.message);
        }
        return Ok(Err(1));
    }
    let Some(droplet) = server.droplet() else {
        bail!("agent {agent_id} reported a staging without uploading a droplet");
    };
    let sha1 = {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(&droplet))
    };
    if r.droplet_sha1.as_deref() != Some(sha1.as_str()) {
        bail!(
            "the uploaded droplet's sha1 is {sha1}, the agent reported {:?}",
            r.droplet_sha1
        );
    }
    // What the tail missed at the end (the container went before the tail caught up).
    if let Some(full) = ctl::stage::droplet_log(&droplet) {
        if let Some(rest) = full.get(outcome.log_bytes as usize..) {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(rest)?;
            out.flush()?;
        }
    }
    eprintln!(
        "staged {app}: buildpack {}, start command {:?}, droplet {} bytes, sha1 {sha1}",
        r.detected_buildpack.as_deref().unwrap_or("?"),
        r.detected_start_command.as_deref().unwrap_or(""),
        droplet.len()
    );
    Ok(Ok(Staged {
        server,
        app,
        stack,
        memory,
        disk,
        sha1,
        droplet,
    }))
}

async fn stage_only(bus: &Bus, window: Duration, a: StageCmdArgs) -> Result<i32> {
    let staged = match stage_app(bus, window, &a.stage).await? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    std::fs::write(&a.output, &staged.droplet)
        .with_context(|| format!("writing {}", a.output.display()))?;
    println!(
        "droplet saved to {} ({} bytes, sha1 {})",
        a.output.display(),
        staged.droplet.len(),
        staged.sha1
    );
    Ok(0)
}

async fn push(bus: &Bus, window: Duration, a: PushArgs) -> Result<i32> {
    if a.instances == 0 {
        bail!("--instances must be at least 1");
    }
    let staged = match stage_app(bus, window, &a.stage).await? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    // Fresh capacity figures: the staging's reservation may just have been released.
    let ads = ctl::advertisements(bus, window).await?;
    if ads.is_empty() {
        bail!("no agent advertised within {window:?}");
    }
    let uri = staged.server.url(ctl::stage::DROPLET_PATH);
    start_instances(
        bus,
        window,
        ads,
        &Launch {
            app: staged.app.clone(),
            stack: staged.stack.clone(),
            sha1: staged.sha1.clone(),
            uri,
            instances: a.instances,
            memory: staged.memory,
            disk: staged.disk,
            routes: a.route,
            command: a.stage.command.clone(),
            env: a.stage.env.clone(),
            timeout: a.timeout,
        },
    )
    .await
}
