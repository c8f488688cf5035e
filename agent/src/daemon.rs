//! The daemon: builds the [`Cell`] from the configuration, starts every subsystem (instances,
//! tasks, directory server), advertises capacity, and turns signals into shutdown or
//! evacuation (spec §8).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::bus::Bus;
use crate::cell::Cell;
use crate::config::{secs, Config};
use crate::instance::Instances;
use crate::logs::LogRouter;
use crate::protocol::{subject, Advertise, Goodbye, PlacementProperties};
use crate::resources::Resources;
use crate::signer::Signer;
use crate::staging::Stagings;
use crate::task::Tasks;

/// What ends the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// TERM, INT, QUIT: stop everything now.
    Shutdown,
    /// USR2: evacuate, then shut down.
    Evacuate,
}

/// Run the agent until a signal ends it; every instance and task is stopped and its
/// container destroyed before this returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    for dir in [
        config.base_dir.clone(),
        config.db_dir(),
        config.droplets_dir(),
        config.crashes_dir(),
        config.tmp_dir(),
        config.staging_dir(),
    ] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if let Some(pid_file) = &config.pid_filename {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", pid_file.display()))?;
    }

    let id = uuid::Uuid::new_v4().to_string();
    let bus = Bus::connect(&config.nats_servers, &format!("agent-{}", config.index))
        .await
        .context("connecting to NATS")?;
    let address = garden_client::Address::parse(&config.garden_address)
        .map_err(|e| anyhow::anyhow!("garden_address {:?}: {e}", config.garden_address))?;
    let garden = garden_client::Client::new(address);
    if let Err(e) = garden.ping().await {
        tracing::warn!(error = %e, "gardend is not answering yet");
    }
    let mut cache_config = executor::cache::CacheConfig::new(config.droplets_dir());
    // Droplets are named by their SHA1: one download per SHA1, no revalidation.
    cache_config.content_addressed = true;
    let cache = executor::cache::DownloadCache::open(cache_config).map_err(|e| {
        anyhow::anyhow!("droplet cache in {}: {e}", config.droplets_dir().display())
    })?;
    let logs = Arc::new(LogRouter::default());
    let executor = executor::container::Executor::new(
        Arc::new(garden.clone()),
        Arc::new(cache),
        logs.clone(),
        executor::container::ExecutorConfig {
            cell_id: id.clone(),
            // The agent's own `Resources` decide what fits; the executor must never refuse.
            capacity: executor::container::Resources {
                memory_mb: u64::MAX / 4,
                disk_mb: u64::MAX / 4,
                containers: u64::MAX / 4,
            },
            inode_limit: config.instance.disk_inode_limit,
            // Lets a restarted agent find (and destroy) the task containers of its last run.
            container_properties: [(
                crate::instance::OWNER_PROPERTY.to_string(),
                config.base_dir.display().to_string(),
            )]
            .into(),
            ..Default::default()
        },
    );
    let cell = Arc::new(Cell {
        id: id.clone(),
        dir_server_id: uuid::Uuid::new_v4().to_string(),
        resources: Resources::new(config.capacity()),
        config,
        bus,
        garden,
        executor,
        signer: Signer::random(),
        logs,
    });
    tracing::info!(agent = %cell.id, "agent starting");

    let instances = Instances::new(cell.clone());
    // Read before the instance registry rewrites the snapshot.
    let stagings = Stagings::new(cell.clone(), instances.clone());
    let stale_stagings = stagings.load_stale();
    stagings.install_snapshot();
    instances.recover().await;
    stagings.fail_stale(stale_stagings).await;

    let listener = tokio::net::TcpListener::bind((
        std::net::Ipv4Addr::UNSPECIFIED,
        cell.config.directory_server.v2_port,
    ))
    .await
    .with_context(|| {
        format!(
            "directory_server.v2_port: cannot listen on {}",
            cell.config.directory_server.v2_port
        )
    })?;
    let dir_server = tokio::spawn(crate::dirserver::serve(
        listener,
        cell.clone(),
        Arc::new(crate::staging::Roots {
            instances: instances.clone(),
            stagings: stagings.clone(),
        }),
    ));

    let mut handles = instances.serve().await?;
    let tasks = Tasks::new(cell.clone());
    let metrics_server = match cell.config.metrics_port {
        Some(port) => {
            let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
                .await
                .with_context(|| format!("metrics_port: cannot listen on {port}"))?;
            let (c, i, t, s) = (
                cell.clone(),
                instances.clone(),
                tasks.clone(),
                stagings.clone(),
            );
            let census: crate::metrics::CensusFn = Arc::new(move || crate::metrics::Census {
                instances: i.state_counts(),
                tasks: t.state_counts(),
                stagings_active: s.active_count(),
                capacity: c.resources.capacity(),
                remaining: c.resources.remaining(),
            });
            Some(tokio::spawn(crate::metrics::serve(listener, census)))
        }
        None => None,
    };
    handles.extend(tasks.serve().await?);
    handles.extend(stagings.serve().await?);

    let (advertising_tx, advertising) = tokio::sync::watch::channel(true);
    {
        let (cell, instances, advertising) = (cell.clone(), instances.clone(), advertising.clone());
        handles.push(
            cell.bus
                .clone()
                .serve::<serde_json::Value, _, _>(subject::LOCATE, None, move |_| {
                    let (cell, instances, advertising) =
                        (cell.clone(), instances.clone(), advertising.clone());
                    async move {
                        if *advertising.borrow() {
                            advertise(&cell, &instances).await;
                        }
                    }
                })
                .await?,
        );
    }
    handles.push(tokio::spawn(advertise_loop(
        cell.clone(),
        instances.clone(),
        advertising.clone(),
    )));

    let ending = wait_for_signal(&cell, &instances).await?;
    tracing::info!(?ending, "agent stopping");
    advertising_tx.send_replace(false);
    goodbye(&cell, &instances).await;
    if ending == Ending::Evacuate {
        // Stagings in flight may finish (their apps are not started here) meanwhile.
        tokio::join!(instances.evacuate(), stagings.evacuate());
    }
    stagings.shutdown().await;
    instances.shutdown().await;
    tasks.shutdown().await;
    for h in handles {
        h.abort();
    }
    dir_server.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    cell.bus.flush().await;
    if let Some(pid_file) = &cell.config.pid_filename {
        let _ = std::fs::remove_file(pid_file);
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Wait for TERM/INT/QUIT (shutdown) or USR2 (evacuate); USR1 only says goodbye.
async fn wait_for_signal(cell: &Arc<Cell>, instances: &Arc<Instances>) -> anyhow::Result<Ending> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(Ending::Shutdown),
            _ = int.recv() => return Ok(Ending::Shutdown),
            _ = quit.recv() => return Ok(Ending::Shutdown),
            _ = usr2.recv() => return Ok(Ending::Evacuate),
            _ = usr1.recv() => {
                tracing::info!("USR1: saying goodbye, instances keep running");
                instances.stop_advertising();
                goodbye(cell, instances).await;
            }
        }
    }
}

/// `dea.advertise` now, unless the agent said goodbye.
pub async fn advertise(cell: &Cell, instances: &Instances) {
    if !instances.advertising() {
        return;
    }
    let left = cell.resources.remaining();
    let msg = Advertise {
        id: cell.id.clone(),
        stacks: cell.config.stacks.iter().map(|s| s.name.clone()).collect(),
        url: None,
        available_memory: left.memory_mb,
        available_disk: left.disk_mb,
        app_id_to_count: instances.app_id_to_count(),
        placement_properties: PlacementProperties {
            zone: cell.config.placement_properties.zone.clone(),
        },
    };
    cell.bus.publish(subject::ADVERTISE, &msg).await;
}

async fn goodbye(cell: &Cell, instances: &Instances) {
    let msg = Goodbye {
        id: cell.id.clone(),
        ip: cell.config.local_ip.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        app_id_to_count: instances.app_id_to_count(),
    };
    cell.bus.publish(subject::SHUTDOWN, &msg).await;
    cell.bus.flush().await;
}

/// Advertise at boot, every `intervals.advertise`, and right after a NATS reconnect.
async fn advertise_loop(
    cell: Arc<Cell>,
    instances: Arc<Instances>,
    advertising: tokio::sync::watch::Receiver<bool>,
) {
    let period = secs(cell.config.intervals.advertise);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_connected = true;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = poll.tick() => {
                let connected = matches!(
                    cell.bus.client().connection_state(),
                    async_nats::connection::State::Connected
                );
                let reconnected = connected && !was_connected;
                was_connected = connected;
                if !reconnected {
                    continue;
                }
                tracing::info!("NATS reconnected: advertising and heartbeating now");
                instances.heartbeat().await;
            }
        }
        if *advertising.borrow() {
            advertise(&cell, &instances).await;
        }
    }
}
