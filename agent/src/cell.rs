//! What every subsystem of the agent shares: identity, configuration, the bus, the executor
//! (and through it gardend), capacity and the URL signer.

use std::sync::Arc;

use crate::bus::Bus;
use crate::config::Config;
use crate::resources::Resources;
use crate::signer::Signer;

pub struct Cell {
    /// Random per boot (spec §2): the `<uuid>` of `dea.<uuid>.start`.
    pub id: String,
    /// Random per boot: the directory server's host name is `<dir_server_id>.<domain>`.
    pub dir_server_id: String,
    pub config: Config,
    pub bus: Bus,
    /// gardend, for what the executor does not wrap (events, metrics, attach by process id).
    pub garden: garden_client::Client,
    pub executor: Arc<executor::container::Executor>,
    pub resources: Resources,
    pub signer: Signer,
    /// The executor's log sink: subscribe here to a container's output by its log guid.
    pub logs: Arc<crate::logs::LogRouter>,
}

impl Cell {
    /// `<dir_server_id>.<domain>`.
    pub fn dir_server_host(&self) -> String {
        format!("{}.{}", self.dir_server_id, self.config.domain)
    }

    /// A signed directory-server URL for `file_path` under `url_path`
    /// (`/instance_paths/<id>` or `/staging_tasks/<id>/file_path`).
    pub fn file_url(&self, url_path: &str, file_path: &str) -> String {
        let query = self
            .signer
            .signed_query(url_path, file_path, crate::signer::unix_now());
        format!(
            "{}://{}{}?{}",
            self.config.directory_server.protocol,
            self.dir_server_host(),
            url_path,
            query
        )
    }
}
